import Synchronization

/// Picks among weighted items by smooth weighted round-robin (nginx's): every pick adds each
/// item's weight to its running score, takes the highest, and takes the total off it. Over any
/// run of picks each item's share is its weight's within one pick, and the heavier items are
/// spread out rather than bunched (weights 1 and 3 go b a b b, b a b b, ...). Shared by the
/// event loops: one lock, held for a few additions.
final class WeightedChoice<Item: Sendable>: Sendable {
    let items: [Item]
    let weights: [Double]
    private let total: Double
    private let scores: Mutex<[Double]>

    /// `weights` are positive (the configuration checked them), one per item.
    init(_ items: [Item], weights: [Double]) {
        precondition(items.count == weights.count && !items.isEmpty, "a weighted choice needs an item per weight")
        self.items = items
        self.weights = weights
        self.total = weights.reduce(0, +)
        self.scores = Mutex(Array(repeating: 0, count: items.count))
    }

    var count: Int { items.count }

    /// The next item, among those `isEligible` lets serve (all by default); nil when none may.
    func next(where isEligible: (Item) -> Bool = { _ in true }) -> Item? {
        guard items.count > 1 else { return isEligible(items[0]) ? items[0] : nil }
        let chosen = scores.withLock { scores -> Int? in
            var best: Int?
            var eligibleTotal = 0.0
            for index in scores.indices where isEligible(items[index]) {
                scores[index] += weights[index]
                eligibleTotal += weights[index]
                if best.map({ scores[index] > scores[$0] }) ?? true { best = index }
            }
            if let best { scores[best] -= eligibleTotal }
            return best
        }
        return chosen.map { items[$0] }
    }
}
