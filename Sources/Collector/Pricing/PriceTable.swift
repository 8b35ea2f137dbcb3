import Foundation

/// What one model costs, in USD per million tokens of each kind (the properties spell the file's keys).
// swift-format-ignore: AlwaysUseLowerCamelCase
struct ModelPrice: Codable, Equatable, Sendable {
    var provider: String
    var model: String
    var input: Double
    var cached_input: Double?
    var cache_creation: Double?
    var output: Double
    /// The Realtime models' audio rates; absent, audio is priced as text.
    var audio_input: Double?
    var audio_cached_input: Double?
    var audio_output: Double?

    /// The cost of `usage`: each kind of token at its own price, cache prices falling back to
    /// input, audio prices to text's.
    func cost(of usage: TokenUsage) -> Double {
        let perToken = 1.0 / 1_000_000
        let text =
            Double(usage.input) * input
            + Double(usage.cachedInput) * (cached_input ?? input)
            + Double(usage.cacheCreation) * (cache_creation ?? input)
            + Double(usage.output) * output
        let audio =
            Double(usage.audioInput) * (audio_input ?? input)
            + Double(usage.audioCachedInput) * (audio_cached_input ?? cached_input ?? audio_input ?? input)
            + Double(usage.audioOutput) * (audio_output ?? output)
        return (text + audio) * perToken
    }
}

/// The price list: the one shipped in `Resources/prices.json`, or a file given with `--prices`.
/// Models are found by their normalised name, so a dated snapshot (`gpt-4o-2024-08-06`,
/// `claude-3-5-haiku-20241022`, `gemini-2.0-flash-001`) is priced as its family. A model not in the
/// list costs nothing and is reported as unpriced: a guess would be worse than a gap.
struct PriceTable: Sendable {
    // swift-format-ignore: AlwaysUseLowerCamelCase
    struct File: Codable {
        var about: String?
        var as_of: String?
        var models: [ModelPrice]
    }

    let asOf: String
    private let byName: [String: ModelPrice]

    init(file: File) throws(PriceTableError) {
        var byName: [String: ModelPrice] = [:]
        for price in file.models {
            guard price.input >= 0, price.output >= 0, (price.cached_input ?? 0) >= 0, (price.cache_creation ?? 0) >= 0,
                (price.audio_input ?? 0) >= 0, (price.audio_cached_input ?? 0) >= 0, (price.audio_output ?? 0) >= 0
            else {
                throw PriceTableError("the price of \(price.model) is negative")
            }
            let name = Self.normalise(price.model)
            guard byName[name] == nil else { throw PriceTableError("\(price.model) is listed twice (as \(name))") }
            byName[name] = price
        }
        self.byName = byName
        self.asOf = file.as_of ?? "unknown"
    }

    init(json: Data) throws(PriceTableError) {
        let file: File
        do {
            file = try JSONDecoder().decode(File.self, from: json)
        } catch {
            throw PriceTableError("the price table is not valid: \(error)")
        }
        try self.init(file: file)
    }

    /// The table shipped with the collector.
    static func shipped() throws(PriceTableError) -> PriceTable {
        guard let url = Bundle.module.url(forResource: "prices", withExtension: "json"),
            let data = try? Data(contentsOf: url)
        else {
            throw PriceTableError(
                "the shipped price table (prices.json) is missing next to the binary; give one with --prices")
        }
        return try PriceTable(json: data)
    }

    static func load(path: String) throws(PriceTableError) -> PriceTable {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw PriceTableError("cannot read the price table --prices \(path)")
        }
        return try PriceTable(json: data)
    }

    var count: Int { byName.count }

    func price(for model: String) -> ModelPrice? {
        guard !model.isEmpty else { return nil }
        let name = Self.normalise(model)
        if let price = byName[name] { return price }
        // Routers write "claude-3.5-sonnet" for Anthropic's "claude-3-5-sonnet".
        if name.hasPrefix("claude"), name.contains(".") { return byName[name.replacingOccurrences(of: ".", with: "-")] }
        return nil
    }

    /// Lower case, without a vendor prefix (`openai/`, `models/`) and without the suffixes that
    /// name a snapshot of a model rather than another model: dates, `-latest`, `-001`, `@20241022`,
    /// `-preview-05-20`, `-exp-0827`.
    static func normalise(_ model: String) -> String {
        var name = model.lowercased()
        if let slash = name.lastIndex(of: "/") { name = String(name[name.index(after: slash)...]) }
        if let at = name.firstIndex(of: "@") { name = String(name[..<at]) }
        var parts = name.split(separator: "-", omittingEmptySubsequences: false)
        func digits(_ part: Substring, _ count: Int) -> Bool { part.count == count && part.allSatisfy(\.isASCIIDigit) }
        while parts.count > 1 {
            let last = parts[parts.count - 1]
            if ["latest", "preview", "exp"].contains(last) || digits(last, 8) || digits(last, 4) || digits(last, 3) {
                parts.removeLast() // -latest, -20241022, -0125, -001
            } else if parts.count > 3, digits(last, 2), digits(parts[parts.count - 2], 2),
                digits(parts[parts.count - 3], 4) || parts[parts.count - 3] == "preview"
            {
                parts.removeLast(3) // -2024-07-18, -preview-05-20
            } else {
                break
            }
        }
        return parts.joined(separator: "-")
    }
}

extension Character {
    var isASCIIDigit: Bool { isASCII && isNumber }
}

struct PriceTableError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
