import Synchronization

/// Conversions of numbers that came from outside (a query string, a JSON body, a flag, a variable,
/// a wire field) to fixed-width integers. Swift's own `Int64(someDouble)` traps on NaN, on an
/// infinity and on anything out of range, and `a + b` traps on overflow: from untrusted input
/// either is a remote crash. These never trap.
extension FixedWidthInteger {
    /// `value` rounded toward zero, or nil when it is NaN, infinite or outside this type's range.
    @inlinable
    public init?(checkedTruncating value: Double) {
        guard value.isFinite else { return nil }
        // `init?(exactly:)` answers nil, rather than trapping, for a value out of range.
        self.init(exactly: value.rounded(.towardZero))
    }

    /// `value` rounded toward zero and held to this type's range; NaN gives `ifNaN`.
    @inlinable
    public init(clampingFinite value: Double, ifNaN: Self = 0) {
        if value.isNaN {
            self = ifNaN
        } else if let exact = Self(checkedTruncating: value) {
            self = exact
        } else {
            self = value < 0 ? .min : .max
        }
    }

    /// The sum, held to this type's range instead of trapping on overflow.
    @inlinable
    public func addingClamped(_ other: Self) -> Self {
        let (sum, overflow) = addingReportingOverflow(other)
        guard overflow else { return sum }
        return other < 0 ? .min : .max
    }

    /// The product, held to this type's range instead of trapping on overflow.
    @inlinable
    public func multipliedClamped(by other: Self) -> Self {
        let (product, overflow) = multipliedReportingOverflow(by: other)
        guard overflow else { return product }
        return (self < 0) != (other < 0) ? .min : .max
    }
}

/// A configuration value that can't be used: it names the flag or variable, and the value.
public struct ConfigurationError: Error, CustomStringConvertible, Sendable, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Settings read from environment variables, where a command-line option takes its default.
///
/// An option's default is computed before anything can throw, so a variable that is set but can't
/// be read is remembered here and reported by `check()` when the command validates, instead of
/// silently giving way to the default.
public enum EnvironmentSettings {
    private static let problems = Mutex<[String]>([])
    private static let origins = Mutex<[String: String]>([:])

    /// Variables whose values came from elsewhere (a configuration file), and how to name each in
    /// an error: `llmtap.threads (sidecar.yml line 12)`.
    public static func setOrigins(_ named: [String: String]) {
        origins.withLock { $0 = named }
    }

    /// How a problem names the variable: by where its value came from.
    static func label(_ name: String) -> String {
        origins.withLock { $0[name] } ?? name
    }

    /// The variable as an integer in `range`; `fallback` when unset or empty.
    public static func int(
        _ name: String, _ fallback: Int, in range: ClosedRange<Int>? = nil,
        environment: [String: String]
    ) -> Int {
        optionalInt(name, in: range, environment: environment) ?? fallback
    }

    /// The variable as an integer in `range`; nil when unset or empty.
    public static func optionalInt(
        _ name: String, in range: ClosedRange<Int>? = nil, environment: [String: String]
    ) -> Int? {
        guard let text = environment[name], !text.isEmpty else { return nil }
        guard let value = Int(text.trimmingWhitespace), range?.contains(value) ?? true else {
            let expected =
                range.map { "an integer from \($0.lowerBound) to \($0.upperBound)" } ?? "an integer"
            report("\(label(name)) must be \(expected), not \"\(text)\"")
            return nil
        }
        return value
    }

    /// The variable as a finite number of seconds; `fallback` when unset or empty.
    public static func seconds(_ name: String, _ fallback: Double, environment: [String: String])
        -> Double
    {
        guard let text = environment[name], !text.isEmpty else { return fallback }
        guard let value = Double(text.trimmingWhitespace), value.isFinite else {
            report("\(label(name)) must be a number of seconds, not \"\(text)\"")
            return fallback
        }
        return value
    }

    /// The variable as one of `type`'s raw values; `fallback` when unset or empty.
    public static func choice<T: RawRepresentable & CaseIterable>(
        _ name: String, _ fallback: T, environment: [String: String]
    ) -> T
    where T.RawValue == String {
        guard let text = environment[name], !text.isEmpty else { return fallback }
        guard let value = T(rawValue: text) else {
            report(
                "\(label(name)) must be one of \(T.allCases.map(\.rawValue).joined(separator: ", ")), not \"\(text)\""
            )
            return fallback
        }
        return value
    }

    /// A boolean switch: "1", "true" or "yes" turn it on, "0", "false", "no" or empty leave it off.
    public static func flag(_ name: String, environment: [String: String]) -> Bool {
        guard let text = environment[name] else { return false }
        switch text.lowercased() {
        case "1", "true", "yes", "on": return true
        case "", "0", "false", "no", "off": return false
        default:
            report("\(label(name)) must be 1 or 0, not \"\(text)\"")
            return false
        }
    }

    /// How to name an option whose default comes from `variable`, in an error about `value`: by
    /// the variable (and the flag) when the value is the variable's, by the flag alone otherwise.
    public static func optionName(
        _ flag: String, _ variable: String, value: String, environment: [String: String]
    ) -> String {
        environment[variable] == value ? "\(label(variable)) (\(flag))" : flag
    }

    static func report(_ problem: String) {
        problems.withLock { $0.append(problem) }
    }

    /// Takes the problems found so far (for tests: they share one process).
    public static func drainProblems() -> [String] {
        problems.withLock { found in
            defer { found = [] }
            return found
        }
    }

    /// Throws every problem found so far, in one error.
    public static func check() throws(ConfigurationError) {
        let found = problems.withLock { $0 }
        guard found.isEmpty else { throw ConfigurationError(found.joined(separator: "; ")) }
    }

    /// A duration in seconds from a flag or variable, as nanoseconds: finite, positive (or zero
    /// when `allowZero`), and at most `maximum` seconds.
    public static func nanoseconds(
        _ seconds: Double, option: String, allowZero: Bool = false, maximum: Double = maximumSeconds
    ) throws(ConfigurationError) -> Int64 {
        guard seconds.isFinite, allowZero ? seconds >= 0 : seconds > 0, seconds <= maximum,
            let nanos = Int64(checkedTruncating: seconds * 1e9)
        else {
            throw ConfigurationError(
                "\(option) must be a number of seconds \(allowZero ? "from 0" : "above 0") up to \(Int(maximum)), not \(seconds)"
            )
        }
        return nanos
    }

    /// About 115 days: longer than any timeout or interval needs, and far inside Int64 nanoseconds.
    public static let maximumSeconds: Double = 10_000_000
}

extension String {
    fileprivate var trimmingWhitespace: Substring {
        var text = self[...]
        while let first = text.first, first == " " || first == "\t" { text = text.dropFirst() }
        while let last = text.last, last == " " || last == "\t" { text = text.dropLast() }
        return text
    }
}
