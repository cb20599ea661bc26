import Foundation

/// Turns event properties into the JSON object text the core checks and stores.
///
/// Accepted values, at any depth: `nil` / `NSNull`, `String`, `Bool`, the integer types,
/// finite `Double` and `Float`, `Decimal`, `NSNumber`, arrays of these and `[String: Any]`
/// dictionaries. Anything else (a `Date`, a custom struct, NaN or infinity) throws
/// ``BackfillError/invalidArgument(_:)`` naming the key path, e.g. `tags[2]` or `device.model`.
/// The core then applies the contract's rules (SPEC §4: at most 16 levels, 256 KiB per event).
enum Properties {
    static func json(_ properties: [String: Any?]) throws -> String {
        var out = "{"
        var first = true
        // Sorted, so the same properties always make the same text.
        for key in properties.keys.sorted() {
            if !first { out += "," }
            first = false
            writeString(&out, key)
            out += ":"
            try writeValue(&out, properties[key] ?? nil, path: key)
        }
        out += "}"
        return out
    }

    /// The JSON text of one property value (``Backfill/register(_:_:)``), checked like `json`.
    static func json(value: Any?, key: String) throws -> String {
        var out = ""
        try writeValue(&out, value, path: key)
        return out
    }

    private static func writeValue(_ out: inout String, _ value: Any?, path: String) throws {
        guard let value = unwrap(value) else {
            out += "null"
            return
        }
        switch value {
        case is NSNull:
            out += "null"
        case let v as String:
            writeString(&out, v)
        case let v as Substring:
            writeString(&out, String(v))
        case let v as Bool where !(value is NSNumber) || isBoolean(value):
            out += v ? "true" : "false"
        case let v as Int: out += String(v)
        case let v as Int8: out += String(v)
        case let v as Int16: out += String(v)
        case let v as Int32: out += String(v)
        case let v as Int64: out += String(v)
        case let v as UInt: out += String(v)
        case let v as UInt8: out += String(v)
        case let v as UInt16: out += String(v)
        case let v as UInt32: out += String(v)
        case let v as UInt64: out += String(v)
        case let v as Double:
            try writeFinite(&out, v, path: path)
        case let v as Float:
            try writeFinite(&out, Double(v), path: path)
        case let v as Decimal:
            guard v.isFinite else { throw invalid(path, "is \(v); JSON has no NaN") }
            out += "\(v)"
        case let v as [Any?]:
            try writeArray(&out, v, path: path)
        case let v as [Any]:
            try writeArray(&out, v.map { Optional($0) }, path: path)
        case let v as [String: Any?]:
            try writeObject(&out, v, path: path)
        case let v as [String: Any]:
            try writeObject(&out, v.mapValues { Optional($0) }, path: path)
        default:
            throw invalid(
                path,
                "has unsupported type \(type(of: value)); use a String, number, Bool, nil, array or "
                    + "[String: Any] (convert dates to ISO-8601 strings or epoch milliseconds)")
        }
    }

    private static func writeObject(_ out: inout String, _ map: [String: Any?], path: String) throws {
        out += "{"
        var first = true
        for key in map.keys.sorted() {
            if !first { out += "," }
            first = false
            writeString(&out, key)
            out += ":"
            try writeValue(&out, map[key] ?? nil, path: "\(path).\(key)")
        }
        out += "}"
    }

    private static func writeArray(_ out: inout String, _ list: [Any?], path: String) throws {
        out += "["
        for (index, item) in list.enumerated() {
            if index > 0 { out += "," }
            try writeValue(&out, item, path: "\(path)[\(index)]")
        }
        out += "]"
    }

    private static func writeFinite(_ out: inout String, _ value: Double, path: String) throws {
        guard value.isFinite else { throw invalid(path, "is \(value); JSON has no NaN or infinity") }
        // Swift prints the shortest text that reads back as the same Double ("21.5", "1e+20").
        out += "\(value)"
    }

    /// RFC 8259 §7: quote, backslash and control characters are escaped.
    private static func writeString(_ out: inout String, _ text: String) {
        out += "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                out += String(format: "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }

    /// `Any` may hold an `Optional` (from `[String: Any?]` literals): look through it.
    private static func unwrap(_ value: Any?) -> Any? {
        guard let value else { return nil }
        let mirror = Mirror(reflecting: value)
        guard mirror.displayStyle == .optional else { return value }
        return mirror.children.first.flatMap { unwrap($0.value) }
    }

    /// An `NSNumber` made from a `Bool` (on Apple platforms every number bridges to `Bool`).
    private static func isBoolean(_ value: Any) -> Bool {
        #if canImport(ObjectiveC)
            if let n = value as? NSNumber { return CFGetTypeID(n) == CFBooleanGetTypeID() }
        #endif
        return true
    }

    private static func invalid(_ path: String, _ what: String) -> BackfillError {
        .invalidArgument("property \"\(path)\" \(what)")
    }
}
