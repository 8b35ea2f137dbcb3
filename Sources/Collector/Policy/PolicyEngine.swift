import Crypto
import Foundation
import GRDB
import Logging
import Synchronization
import Wire

/// Owns projects, virtual keys, budgets and spend, and tells every sidecar about them over the
/// policy channel (a ZeroMQ XPUB socket the collector binds, `--listen-policy`).
///
/// Everything happens on one thread of its own, which owns the socket: management requests
/// (SQLite writes), spend from stored exchanges, snapshots for sidecars that subscribe, and the
/// periodic beat. Callers hand work over and never wait for the socket.
final class PolicyEngine: Sendable {
    struct Settings: Sendable {
        var endpoint = "tcp://*:7102"
        /// How often the state's version is announced, so a sidecar that missed a change notices.
        var beatInterval: Duration = .milliseconds(200)
        /// How long the thread sleeps in poll with nothing to do (work handed over wakes it at once).
        var pollMilliseconds = 50
        /// Snapshots sent per second at most, with this burst: each costs the whole key table, so a
        /// peer subscribing thousands of times must not make the collector build thousands. A
        /// subscription past the budget is refused and counted; a sidecar asks again a second later.
        var snapshotsPerSecond: Double = 100
        var snapshotBurst: Double = 200
    }

    private struct Inbox {
        var jobs: [@Sendable (PolicyCore) -> Void] = []
        var spend: [SpendEvent] = []
        var closing = false
    }

    /// A class around the mutex, so the engine's thread can hold it before `self` exists.
    private final class InboxBox: Sendable {
        let mutex = Mutex(Inbox())
    }

    private let inbox = InboxBox()
    private let finished = DispatchSemaphore(value: 0)
    /// The write end of a pipe whose read end the engine's thread polls with its socket: whoever
    /// hands work over writes a byte to wake it.
    private let wakeup: Int32
    let boundEndpoint: String

    /// Binds the socket and loads the state on the engine's thread; throws what either threw.
    init(database: AppDatabase, settings: Settings, metrics: CollectorMetrics, logger: Logger) throws {
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else { throw PolicyError.invalid("pipe() failed: errno \(errno)") }
        for end in ends { _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK) }
        let wakeup = ends[0]
        self.wakeup = ends[1]
        let started = DispatchSemaphore(value: 0)
        let startup = StartupBox()
        let thread = Thread { [inbox, finished] in
            let core: PolicyCore
            do {
                core = try PolicyCore(
                    database: database, settings: settings, metrics: metrics, logger: logger, wakeup: wakeup)
                startup.result.withLock { $0 = .success(core.boundEndpoint) }
            } catch {
                startup.result.withLock { $0 = .failure(error) }
                started.signal()
                finished.signal()
                return
            }
            started.signal()
            core.run(take: {
                inbox.mutex.withLock { inbox in
                    defer {
                        inbox.jobs = []
                        inbox.spend = []
                    }
                    return (inbox.jobs, inbox.spend, inbox.closing)
                }
            })
            finished.signal()
        }
        thread.name = "llmtap-policy"
        thread.start()
        started.wait()
        boundEndpoint = try startup.result.withLock { $0! }.get()
    }

    private final class StartupBox: Sendable {
        let result = Mutex<Result<String, any Error>?>(nil)
    }

    /// Runs `job` on the engine's thread.
    func submit(_ job: @escaping @Sendable (PolicyCore) -> Void) {
        let wake = inbox.mutex.withLock { inbox in
            inbox.jobs.append(job)
            return inbox.jobs.count + inbox.spend.count == 1
        }
        if wake { wakeEngine() }
    }

    /// Counts a stored exchange's cost and tokens toward its project's budgets.
    func account(_ event: SpendEvent) {
        let wake = inbox.mutex.withLock { inbox in
            inbox.spend.append(event)
            return inbox.jobs.count + inbox.spend.count == 1
        }
        if wake { wakeEngine() }
    }

    private func wakeEngine() {
        var byte: UInt8 = 1
        _ = write(wakeup, &byte, 1)
    }

    func shutdown() {
        inbox.mutex.withLock { $0.closing = true }
        wakeEngine()
        finished.wait()
        finished.signal()
    }

    deinit {
        close(wakeup)
    }
    // The read end is the engine thread's, closed when it stops.
}

/// What an exchange spent, for budgets.
struct SpendEvent: Sendable {
    var projectID: String
    var costUSD: Double
    var tokens: Int64
    var startedAtMs: Int64
}

/// Why a management request failed; the HTTP layer turns each into a status.
enum PolicyError: Error, CustomStringConvertible {
    case invalid(String)
    case notFound(String)
    case conflict(String)

    var description: String {
        switch self {
        case .invalid(let text), .notFound(let text), .conflict(let text): text
        }
    }
}

/// A project's spend in each of its periods.
struct ProjectSpend: Sendable, Equatable {
    var dayStartMs: Int64 = 0
    var dayUSD = 0.0
    var dayTokens: Int64 = 0
    var monthStartMs: Int64 = 0
    var monthUSD = 0.0
    var monthTokens: Int64 = 0
    var totalUSD = 0.0
    var totalTokens: Int64 = 0

    func figures(for period: BudgetPeriod) -> (usd: Double, tokens: Int64) {
        switch period {
        case .day: (dayUSD, dayTokens)
        case .month: (monthUSD, monthTokens)
        case .total: (totalUSD, totalTokens)
        }
    }

    /// Starts new periods when `nowMs` has left the current ones.
    mutating func roll(to nowMs: Int64) {
        let day = BudgetPeriod.day.bounds(containing: nowMs).start
        if day != dayStartMs { (dayStartMs, dayUSD, dayTokens) = (day, 0, 0) }
        let month = BudgetPeriod.month.bounds(containing: nowMs).start
        if month != monthStartMs { (monthStartMs, monthUSD, monthTokens) = (month, 0, 0) }
    }

    mutating func add(_ event: SpendEvent) {
        totalUSD += event.costUSD
        totalTokens = totalTokens.addingClamped(event.tokens)
        if event.startedAtMs >= monthStartMs {
            monthUSD += event.costUSD
            monthTokens = monthTokens.addingClamped(event.tokens)
        }
        if event.startedAtMs >= dayStartMs {
            dayUSD += event.costUSD
            dayTokens = dayTokens.addingClamped(event.tokens)
        }
    }
}

/// The engine's state and socket. Lives on the engine's thread only.
final class PolicyCore {
    let database: AppDatabase
    let boundEndpoint: String
    private let settings: PolicyEngine.Settings
    private let metrics: CollectorMetrics
    private let logger: Logger
    private let socket: ZMQSocket
    private let wakeup: Int32
    private let collectorID: String
    private var version: UInt64 = 0
    /// How many snapshots may go out now (`Settings.snapshotsPerSecond`).
    private lazy var snapshotBudget = RateBudget(
        perSecond: settings.snapshotsPerSecond, burst: settings.snapshotBurst, now: .now)
    private var snapshotsRefused = 0
    private var refusalPasses: UInt64 = 0

    private(set) var projects: [String: ProjectRecord] = [:]
    private(set) var keys: [String: VirtualKeyRecord] = [:]
    private(set) var spend: [String: ProjectSpend] = [:]
    /// Each project's state as last sent, to send only what changed.
    private var sentProjects: [String: PolicyProject] = [:]
    private var changedKeys: Set<String> = []
    private var removedProjects: Set<String> = []

    init(
        database: AppDatabase, settings: PolicyEngine.Settings, metrics: CollectorMetrics, logger: Logger, wakeup: Int32
    ) throws {
        self.database = database
        self.wakeup = wakeup
        self.settings = settings
        self.metrics = metrics
        self.logger = logger
        collectorID = UUID().uuidString.lowercased()
        let context = try ZMQContext()
        socket = try ZMQSocket(context: context, kind: .xpub)
        try socket.set(.xpubVerbose(true))
        try socket.set(.linger(milliseconds: 0))
        // Snapshots of a large key table are big; a slow sidecar's queue is bounded by bytes in the
        // kernel and by this many messages here, past which PUB drops (the sidecar then sees a gap).
        try socket.set(.sendHighWaterMark(10_000))
        try socket.bind(settings.endpoint)
        boundEndpoint = try socket.lastEndpoint()
        try load()
    }

    private var nowMs: Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    private func load() throws {
        let now = nowMs
        let day = BudgetPeriod.day.bounds(containing: now).start
        let month = BudgetPeriod.month.bounds(containing: now).start
        try database.writer.read { db in
            for project in try ProjectRecord.fetchAll(db) { projects[project.id] = project }
            for key in try VirtualKeyRecord.fetchAll(db) { keys[key.id] = key }
            let rows = try Row.fetchAll(
                db,
                sql: """
                    SELECT project_id,
                           TOTAL(cost_usd) AS usd, TOTAL(total_tokens) AS tokens,
                           TOTAL(CASE WHEN started_at_ms >= ? THEN cost_usd END) AS month_usd,
                           TOTAL(CASE WHEN started_at_ms >= ? THEN total_tokens END) AS month_tokens,
                           TOTAL(CASE WHEN started_at_ms >= ? THEN cost_usd END) AS day_usd,
                           TOTAL(CASE WHEN started_at_ms >= ? THEN total_tokens END) AS day_tokens
                    FROM exchange WHERE project_id != '' GROUP BY project_id
                    """, arguments: [month, month, day, day])
            for row in rows {
                let id: String = row["project_id"]
                spend[id] = ProjectSpend(
                    dayStartMs: day, dayUSD: row["day_usd"],
                    dayTokens: Int64(clampingFinite: row["day_tokens"] as Double),
                    monthStartMs: month, monthUSD: row["month_usd"],
                    monthTokens: Int64(clampingFinite: row["month_tokens"] as Double),
                    totalUSD: row["usd"], totalTokens: Int64(clampingFinite: row["tokens"] as Double)
                )
            }
        }
        for id in projects.keys where spend[id] == nil {
            spend[id] = ProjectSpend(dayStartMs: day, monthStartMs: month)
        }
        sentProjects = projects.mapValues { wireProject($0, now: now) }
        version = 1
        logger.info(
            "policy loaded",
            metadata: ["projects": "\(projects.count)", "keys": "\(keys.count)", "policy": "\(boundEndpoint)"])
    }

    func run(take: () -> ([@Sendable (PolicyCore) -> Void], [SpendEvent], Bool)) {
        var lastBeat = ContinuousClock.now
        var lastReview = ContinuousClock.now
        while true {
            serveSubscriptions()
            let (jobs, spendEvents, closing) = take()
            for job in jobs { job(self) }
            for event in spendEvents { account(event) }
            let clock = ContinuousClock.now
            if !spendEvents.isEmpty || clock - lastReview >= .milliseconds(250) {
                lastReview = clock
                review()
            }
            if publishChanges() {
                lastBeat = clock
            } else if clock - lastBeat >= settings.beatInterval {
                lastBeat = clock
                beat()
            }
            if closing { break }
            if let ready = try? socket.poll(
                .readable, orReadable: wakeup, timeoutMilliseconds: settings.pollMilliseconds), ready.fdReadable
            {
                var drain = [UInt8](repeating: 0, count: 64)
                while read(wakeup, &drain, drain.count) > 0 {}
            }
        }
        socket.close()
        close(wakeup)
    }

    // MARK: The channel

    /// Answers every snapshot subscription that arrived: "S" + nonce gets the whole state on that
    /// topic. The snapshot is encoded once for all the subscriptions of one pass, and their number
    /// is held to a budget (`Settings.snapshotsPerSecond`).
    private func serveSubscriptions() {
        var encoded: [UInt8]?
        var refused = 0
        while let frames = try? socket.receiveMultipart(dontWait: true) {
            guard let event = frames.first, event.count >= 2, event[0] == 1, event[1] == PolicyFrame.snapshotTopicPrefix
            else { continue }
            guard snapshotBudget.take(now: .now) else {
                refused += 1
                continue
            }
            if encoded == nil {
                var message = header(full: true)
                let now = nowMs
                message.keys = keys.values.filter { isWorthSending($0, now: now) }.map(wireKey)
                message.projects = projects.values.map { wireProject($0, now: now) }
                encoded = try? PolicyFrame.encode(message)
            }
            guard let encoded else { continue }
            do {
                try socket.send(multipart: [Array(event[1...]), encoded], dontWait: true)
            } catch {
                logger.error("could not send on the policy socket", metadata: ["error": "\(error)"])
            }
            metrics.policySnapshotSent()
        }
        if refused > 0 {
            metrics.policySnapshotsRefused(refused)
            snapshotsRefused += refused
            refusalPasses += 1
            if LogSampling.isWorthLogging(occurrence: refusalPasses) {
                logger.warning(
                    "snapshot subscriptions past the budget were refused (a peer subscribing over and over?)",
                    metadata: [
                        "refused": "\(snapshotsRefused)", "per_second": "\(settings.snapshotsPerSecond)",
                    ])
            }
        }
    }

    /// Keys long expired or revoked are left out of snapshots: a sidecar answers 401 for them either way.
    private func isWorthSending(_ key: VirtualKeyRecord, now: Int64) -> Bool {
        let dayAgo = now - 86_400_000
        return key.expiresAtMs > dayAgo && (key.revokedAtMs ?? now) > dayAgo
    }

    private func header(full: Bool) -> PolicyMessage {
        var message = PolicyMessage()
        message.collectorID = collectorID
        message.version = version
        message.baseVersion = full ? 0 : version
        message.full = full
        message.sentUnixNanos = WallClock.nowUnixNanos()
        return message
    }

    private func beat() {
        send(header(full: false), topic: PolicyFrame.broadcastTopic)
    }

    /// Sends what changed since the last call as one message; returns whether there was anything.
    @discardableResult
    private func publishChanges() -> Bool {
        let now = nowMs
        var message = header(full: false)
        for id in changedKeys { if let key = keys[id] { message.keys.append(wireKey(key)) } }
        for (id, project) in projects {
            let state = wireProject(project, now: now)
            if sentProjects[id] != state {
                sentProjects[id] = state
                message.projects.append(state)
            }
        }
        message.removedProjects = Array(removedProjects)
        for id in removedProjects { sentProjects[id] = nil }
        changedKeys = []
        removedProjects = []
        guard !message.keys.isEmpty || !message.projects.isEmpty || !message.removedProjects.isEmpty else {
            return false
        }
        version += 1
        message.baseVersion = version - 1
        message.version = version
        send(message, topic: PolicyFrame.broadcastTopic)
        metrics.policyState(version: version, keys: keys.count)
        return true
    }

    private func send(_ message: PolicyMessage, topic: [UInt8]) {
        do {
            try socket.send(multipart: [topic, try PolicyFrame.encode(message)], dontWait: true)
        } catch {
            logger.error("could not send on the policy socket", metadata: ["error": "\(error)"])
        }
    }

    private func wireKey(_ key: VirtualKeyRecord) -> PolicyKey {
        var wire = PolicyKey()
        wire.secretSha256 = key.secretSHA256
        wire.keyID = key.id
        wire.projectID = key.projectID
        wire.expiresUnixMs = key.expiresAtMs
        wire.revoked = key.revoked
        wire.rateLimitPerHour = UInt32(clamping: key.rateLimitPerHour ?? 0)
        wire.maxParallel = UInt32(clamping: key.maxParallel ?? 0)
        wire.allowedModels = key.allowedModelList
        return wire
    }

    private func wireProject(_ project: ProjectRecord, now: Int64) -> PolicyProject {
        var wire = PolicyProject()
        wire.projectID = project.id
        wire.name = project.name
        wire.credentialRef = project.credentialRef
        if let denial = denial(of: project, now: now) {
            wire.denied = true
            wire.denialReason = denial.reason
            wire.deniedUntilUnixMs = denial.until ?? 0
        }
        return wire
    }

    // MARK: Budgets

    /// Why the project is over its budget now, if it is.
    func denial(of project: ProjectRecord, now: Int64) -> (reason: String, until: Int64?)? {
        guard let period = project.budgetPeriod, project.hasBudget else { return nil }
        let bounds = period.bounds(containing: now)
        if let lifted = project.denialLiftedPeriodStartMs, lifted == bounds.start { return nil }
        let figures = (spend[project.id] ?? ProjectSpend()).figures(for: period)
        if let max = project.budgetMaxUSD, figures.usd >= max {
            return (
                "\(period.rawValue) budget of $\(Self.dollars(max)) reached ($\(Self.dollars(figures.usd)) spent)",
                bounds.end
            )
        }
        if let max = project.budgetMaxTokens, figures.tokens >= max {
            return ("\(period.rawValue) budget of \(max) tokens reached (\(figures.tokens) used)", bounds.end)
        }
        return nil
    }

    /// Dollars to the cent, or to six significant digits below a cent.
    static func dollars(_ value: Double) -> String {
        value >= 0.01 ? String(format: "%.2f", value) : String(format: "%.6g", value)
    }

    private func account(_ event: SpendEvent) {
        guard projects[event.projectID] != nil else { return }
        var figures = spend[event.projectID] ?? ProjectSpend()
        figures.roll(to: nowMs)
        figures.add(event)
        spend[event.projectID] = figures
    }

    /// Rolls periods over and refreshes the budget gauges; denials follow from `publishChanges`.
    private func review() {
        let now = nowMs
        for id in projects.keys { spend[id, default: ProjectSpend()].roll(to: now) }
        for project in projects.values {
            let figures = project.budgetPeriod.map { spend[project.id, default: ProjectSpend()].figures(for: $0) }
            metrics.budget(
                project: project.name, spentUSD: figures?.usd ?? 0, limitUSD: project.budgetMaxUSD,
                spentTokens: figures?.tokens ?? 0, limitTokens: project.budgetMaxTokens,
                denied: denial(of: project, now: now) != nil)
        }
    }

    // MARK: Management

    func createProject(name: String, credentialRef: String) throws -> ProjectRecord {
        guard !projects.values.contains(where: { $0.name == name }) else {
            throw PolicyError.conflict("a project named \(name) already exists")
        }
        let id = VirtualKeySecret.randomID(prefix: "proj_", bytes: 6)
        let project = ProjectRecord(id: id, name: name, credentialRef: credentialRef, createdAtMs: nowMs)
        try database.writer.write { db in try project.insert(db) }
        projects[id] = project
        spend[id] = ProjectSpend()
        spend[id]!.roll(to: nowMs)
        publishChanges()
        logger.notice(
            "project created",
            metadata: ["project_id": "\(id)", "name": "\(name)", "credential_ref": "\(credentialRef)"])
        return project
    }

    func deleteProject(id: String) throws {
        guard let project = projects[id] else { throw PolicyError.notFound("no project \(id)") }
        _ = try database.writer.write { db in try ProjectRecord.deleteOne(db, key: id) }
        projects[id] = nil
        spend[id] = nil
        keys = keys.filter { $0.value.projectID != id }
        removedProjects.insert(id)
        metrics.removeBudget(project: project.name)
        publishChanges()
        logger.notice("project deleted", metadata: ["project_id": "\(id)", "name": "\(project.name)"])
    }

    struct NewKey {
        var projectID: String
        var durationHours: Double
        var rateLimitPerHour: Int?
        var maxParallel: Int?
        var allowedModels: [String]
    }

    func createKey(_ request: NewKey) throws -> (secret: String, key: VirtualKeyRecord) {
        guard projects[request.projectID] != nil else { throw PolicyError.invalid("no project \(request.projectID)") }
        let (secret, id) = VirtualKeySecret.make()
        let now = nowMs
        let models = String(decoding: try JSONEncoder().encode(request.allowedModels), as: UTF8.self)
        let key = VirtualKeyRecord(
            id: id, projectID: request.projectID, secretSHA256: Data(SHA256.hash(data: Data(secret.utf8))),
            createdAtMs: now,
            expiresAtMs: now + Int64(request.durationHours * 3_600_000), revoked: false, revokedAtMs: nil,
            rateLimitPerHour: request.rateLimitPerHour, maxParallel: request.maxParallel, allowedModels: models
        )
        try database.writer.write { db in try key.insert(db) }
        keys[id] = key
        changedKeys.insert(id)
        publishChanges()
        logger.notice("virtual key created", metadata: ["key_id": "\(id)", "project_id": "\(request.projectID)"])
        return (secret, key)
    }

    /// Revokes the key with this secret, or this id.
    func revokeKey(secret: String?, keyID: String?) throws -> VirtualKeyRecord {
        let found: VirtualKeyRecord?
        if let secret {
            let hash = Data(SHA256.hash(data: Data(secret.utf8)))
            found = keys.values.first { $0.secretSHA256 == hash }
        } else {
            found = keyID.flatMap { keys[$0] }
        }
        guard var key = found else { throw PolicyError.notFound("no such token") }
        if !key.revoked {
            key.revoked = true
            key.revokedAtMs = nowMs
            try database.writer.write { db in try key.update(db) }
            keys[key.id] = key
            changedKeys.insert(key.id)
            publishChanges()
            logger.notice("virtual key revoked", metadata: ["key_id": "\(key.id)", "project_id": "\(key.projectID)"])
        }
        return key
    }

    /// Sets a project's budget, or with a nil period removes it.
    @discardableResult
    func setBudget(projectID: String, period: BudgetPeriod?, maxUSD: Double? = nil, maxTokens: Int64? = nil) throws
        -> ProjectRecord
    {
        guard var project = projects[projectID] else { throw PolicyError.notFound("no project \(projectID)") }
        project.budgetPeriod = period
        project.budgetMaxUSD = maxUSD
        project.budgetMaxTokens = maxTokens
        project.denialLiftedPeriodStartMs = nil
        try save(project)
        logger.notice(
            period == nil ? "budget removed" : "budget set",
            metadata: [
                "project_id": "\(projectID)", "period": "\(period?.rawValue ?? "-")",
                "max_usd": "\(maxUSD.map { "\($0)" } ?? "-")",
                "max_tokens": "\(maxTokens.map { "\($0)" } ?? "-")",
            ])
        return project
    }

    /// Lifts a project's budget denial until its period ends.
    func liftDenial(projectID: String) throws {
        guard var project = projects[projectID] else { throw PolicyError.notFound("no project \(projectID)") }
        let now = nowMs
        guard let period = project.budgetPeriod, denial(of: project, now: now) != nil else {
            throw PolicyError.notFound("project \(projectID) is not denied")
        }
        project.denialLiftedPeriodStartMs = period.bounds(containing: now).start
        try save(project)
        logger.notice("budget denial lifted until the period ends", metadata: ["project_id": "\(projectID)"])
    }

    private func save(_ project: ProjectRecord) throws {
        try database.writer.write { db in try project.update(db) }
        projects[project.id] = project
        review()
        publishChanges()
    }

    /// Requests and spend per key of a project in its budget period (or this month), from storage.
    func keyUsage(projectID: String, sinceMs: Int64) throws -> [Row] {
        try database.writer.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT key_id, COUNT(*) AS requests, SUM(CASE WHEN outcome = 'rejected' THEN 1 ELSE 0 END) AS rejected,
                           TOTAL(cost_usd) AS cost_usd, TOTAL(total_tokens) AS tokens
                    FROM exchange WHERE project_id = ? AND started_at_ms >= ? GROUP BY key_id ORDER BY cost_usd DESC
                    """, arguments: [projectID, sinceMs])
        }
    }
}

/// A token bucket: `perSecond` tokens a second, at most `burst` held. Pure: time is passed in.
struct RateBudget {
    let perSecond: Double
    let burst: Double
    private var tokens: Double
    private var at: ContinuousClock.Instant

    init(perSecond: Double, burst: Double, now: ContinuousClock.Instant) {
        self.perSecond = perSecond
        self.burst = burst
        self.tokens = burst
        self.at = now
    }

    /// Takes one token if there is one.
    mutating func take(now: ContinuousClock.Instant) -> Bool {
        let elapsed = now - at
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        tokens = min(burst, tokens + max(0, seconds) * perSecond)
        at = max(at, now)
        guard tokens >= 1 else { return false }
        tokens -= 1
        return true
    }
}
