/// The version both processes report (`--version`, heartbeats, the collector's API).
public enum LLMTapVersion {
    public static let current = "0.1.0"
}
