import Foundation

/// Coverage-guided fuzzing of the parsers, with libFuzzer, from inside the test bundle.
///
/// Each parser's fuzz target is a function of bytes that checks the parser's invariants (no trap,
/// no over-read, bounded memory, the same verdict however the input is split, agreement with a
/// reference where one is defined) and traps when one fails. The tests run every target over its
/// seed corpus and mutations of it on every `swift test`; `scripts/fuzz TARGET SECONDS` builds the
/// bundle with AddressSanitizer and libFuzzer's coverage (`LLMTAP_FUZZ_RUNTIME` set, which defines
/// `LLMTAP_FUZZ` and links libFuzzer without its `main`) and hands the target to libFuzzer.
///
/// The targets live in the bundle, not in executables of their own, because the parsers live in
/// the executable targets, which only test targets can import.
public enum Fuzzing {
    public typealias Target = (UnsafeRawBufferPointer) -> Void

    /// The target `LLMTAP_FUZZ_TARGET` names, when this is a fuzz run.
    public static var requestedTarget: String? { ProcessInfo.processInfo.environment["LLMTAP_FUZZ_TARGET"] }

    /// Runs `target` over its seeds, and over seeded mutations of them: the fuzz targets' invariants
    /// hold in every test run, not only under libFuzzer. When this is a fuzz run for `name`, hands
    /// the target to libFuzzer instead (for `LLMTAP_FUZZ_SECONDS`), starting from the seeds.
    public static func run(_ name: String, seeds: [[UInt8]], mutations: Int = 2_000, _ target: @escaping Target) throws
    {
        if let requested = requestedTarget {
            guard requested == name else { return }
            try fuzz(name, seeds: seeds, target)
            return
        }
        for seed in seeds { seed.withUnsafeBytes(target) }
        var generator = Mutator(seed: UInt64(truncatingIfNeeded: name.hashValueStable))
        for round in 0..<mutations {
            let input = generator.mutate(seeds[round % seeds.count], others: seeds)
            input.withUnsafeBytes(target)
        }
    }

    /// Up to eight cut points in `count` bytes, from one byte of the input: how a target splits the
    /// rest into reads, to check that a parser's verdict does not depend on the split.
    public static func cuts(_ seed: UInt8, _ count: Int) -> [Int] {
        guard count > 1 else { return [] }
        var generator = Mutator(seed: UInt64(seed) &+ 1)
        return (0..<Int(seed % 8 + 1)).map { _ in generator.below(count) }.sorted()
    }

    /// `bytes` as the reads `cuts` make of them (one read without cuts).
    public static func reads(_ bytes: [UInt8], cuts: [Int]) -> [ArraySlice<UInt8>] {
        var out: [ArraySlice<UInt8>] = []
        var start = 0
        for cut in cuts + [bytes.count] where cut >= start {
            out.append(bytes[start..<cut])
            start = cut
        }
        return out
    }

    /// The corpus libFuzzer grows for a target, kept between runs (under the fuzz build folder).
    static func corpusDirectory(_ name: String) -> URL {
        let base =
            ProcessInfo.processInfo.environment["LLMTAP_FUZZ_DIR"] ?? FileManager.default.currentDirectoryPath
            + "/.build-fuzz/fuzz"
        return URL(fileURLWithPath: base).appendingPathComponent(name)
    }

    private static func fuzz(_ name: String, seeds: [[UInt8]], _ target: @escaping Target) throws {
        #if LLMTAP_FUZZ
            let corpus = corpusDirectory(name).appendingPathComponent("corpus")
            let artifacts = corpusDirectory(name).appendingPathComponent("crashes")
            try FileManager.default.createDirectory(at: corpus, withIntermediateDirectories: true)
            try FileManager.default.createDirectory(at: artifacts, withIntermediateDirectories: true)
            for (index, seed) in seeds.enumerated() {
                try Data(seed).write(to: corpus.appendingPathComponent("seed-\(index)"))
            }
            let environment = ProcessInfo.processInfo.environment
            let seconds = environment["LLMTAP_FUZZ_SECONDS"] ?? "20"
            var arguments = [
                "fuzz-\(name)", "-max_total_time=\(seconds)", "-timeout=10", "-rss_limit_mb=2048", "-max_len=65536",
                "-print_final_stats=1", "-artifact_prefix=\(artifacts.path)/",
            ]
            if let extra = environment["LLMTAP_FUZZ_ARGS"] { arguments += extra.split(separator: " ").map(String.init) }
            arguments.append(corpus.path)
            FuzzDriver.target = target
            var cArguments: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
            var count = Int32(arguments.count)
            let status = cArguments.withUnsafeMutableBufferPointer { buffer -> Int32 in
                var pointer: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = buffer.baseAddress
                return LLVMFuzzerRunDriver(&count, &pointer, llmtapFuzzOneInput)
            }
            guard status == 0 else {
                throw TestFailure("libFuzzer stopped with status \(status) on \(name); inputs are in \(artifacts.path)")
            }
        #else
            throw TestFailure(
                "LLMTAP_FUZZ_TARGET is set, but this is not a fuzz build: run scripts/fuzz \(name) SECONDS")
        #endif
    }
}

/// Traps with `message` when a fuzz target's invariant fails: libFuzzer keeps the input that did it.
public func fuzzCheck(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition { fatalError(message()) }
}

#if LLMTAP_FUZZ
    // libFuzzer's C name.
    // swift-format-ignore: AlwaysUseLowerCamelCase
    @_silgen_name("LLVMFuzzerRunDriver")
    private func LLVMFuzzerRunDriver(
        _ argc: UnsafeMutablePointer<Int32>,
        _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
        _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
    ) -> Int32

    private enum FuzzDriver {
        nonisolated(unsafe) static var target: Fuzzing.Target?
    }

    /// libFuzzer's entry point: its driver calls it, and its runtime refers to it by name.
    @_cdecl("LLVMFuzzerTestOneInput")
    public func llmtapFuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
        FuzzDriver.target?(UnsafeRawBufferPointer(start: data, count: size))
        return 0
    }
#endif

/// Small, seeded changes to seeds: bytes flipped, cut, repeated and spliced from other seeds.
struct Mutator {
    private var state: UInt64

    init(seed: UInt64) { state = seed | 1 }

    private mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func below(_ bound: Int) -> Int { bound <= 0 ? 0 : Int(next() % UInt64(bound)) }

    mutating func mutate(_ seed: [UInt8], others: [[UInt8]]) -> [UInt8] {
        var input = seed
        for _ in 0..<(1 + below(4)) {
            let at = below(input.count + 1)
            switch below(6) {
            case 0 where at < input.count: input[at] = UInt8(truncatingIfNeeded: next())
            case 1 where at < input.count: input.remove(at: at)
            case 2:
                input.insert(
                    contentsOf: [0x0D, 0x0A, 0x3A, 0x20, 0x30, 0x7B, 0x22, 0xFF, 0x00, 0x2C].shuffledPrefix(
                        below(4) + 1, &self), at: at)
            case 3 where at < input.count:
                let end = min(input.count, at + below(64) + 1)
                input.insert(contentsOf: input[at..<end], at: at)
            case 4:
                let other = others[below(others.count)]
                let start = below(other.count + 1)
                input.insert(contentsOf: other[start..<min(other.count, start + below(128))], at: at)
            default:
                input = Array(input.prefix(at))
            }
        }
        return input
    }

    fileprivate mutating func pick<T>(_ values: [T]) -> T { values[below(values.count)] }
}

extension Array {
    fileprivate func shuffledPrefix(_ count: Int, _ mutator: inout Mutator) -> [Element] {
        (0..<count).map { _ in mutator.pick(self) }
    }
}

extension String {
    /// A hash that is the same in every run (Swift's `hashValue` is seeded per process).
    fileprivate var hashValueStable: UInt64 {
        utf8.reduce(0xCBF2_9CE4_8422_2325) { ($0 ^ UInt64($1)) &* 0x0100_0000_01B3 }
    }
}
