import Synchronization

/// Keeps a label's values to a bounded set: the first `limit` distinct values seen keep their name,
/// later ones fold into "other". A counter's labels can never change once it has counted, so
/// "first seen" is the stable way to bound them; the full detail is in SQLite.
final class LabelBounds: Sendable {
    let limit: Int
    private let seen = Mutex<Set<String>>([])

    init(limit: Int) {
        self.limit = limit
    }

    func label(_ value: String) -> String {
        let value = value.isEmpty ? "unknown" : value
        return seen.withLock { seen in
            if seen.contains(value) { return value }
            guard seen.count < limit else { return "other" }
            seen.insert(value)
            return value
        }
    }
}
