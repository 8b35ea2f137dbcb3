/// For events that can come in floods (garbage on a socket, malformed requests): log the 1st,
/// 2nd, 4th, 8th... occurrence, each with its count, so a flood can't flood the log but is never silent.
public enum LogSampling {
    public static func isWorthLogging(occurrence count: UInt64) -> Bool {
        count > 0 && count & (count - 1) == 0
    }
}
