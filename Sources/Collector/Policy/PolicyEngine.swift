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
final class PolicyEngine: PolicyRunning {
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
        var jobs: [@Sendable (any PolicyCommands) -> Void] = []
        var spend: [SpendEvent] = []
        var closing = false
    }

    /// A class around the mutex, so the engine's thread can hold it before `self` exists.
    private final class InboxBox: Sendable {
        let mutex = Mutex(Inbox())
    }

    private let inbox = InboxBox()
    /// The engine's thread: it polls its socket and the worker's wake-up pipe together, so work
    /// handed over wakes it at once.
    private let worker: WorkerThread
    let boundEndpoint: String

    /// Binds the socket and loads the state on the engine's thread; throws what either threw.
    init(database: AppDatabase, settings: Settings, metrics: CollectorMetrics, logger: Logger) throws {
        let worker = try WorkerThread(pollableNamed: "llmtap-policy")
        self.worker = worker
        boundEndpoint = try worker.start { [inbox] ready in
            let core: PolicyCore
            do {
                core = try PolicyCore(
                    database: database, settings: settings, metrics: metrics, logger: logger, worker: worker)
            } catch {
                return ready(.failure(error))
            }
            ready(.success(core.boundEndpoint))
            core.run(take: {
                inbox.mutex.withLock { inbox in
                    defer {
                        inbox.jobs = []
                        inbox.spend = []
                    }
                    return (inbox.jobs, inbox.spend, inbox.closing)
                }
            })
        }
    }

    /// Runs `job` on the engine's thread.
    func submit(_ job: @escaping @Sendable (any PolicyCommands) -> Void) {
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
        worker.wake()
    }

    func shutdown() {
        inbox.mutex.withLock { $0.closing = true }
        wakeEngine()
        worker.join()
    }
}

/// The engine's state, store and socket, and the management commands. Lives on the engine's
/// thread only.
final class PolicyCore: PolicyCommands {
    let boundEndpoint: String
    private let store: PolicyStore
    private let settings: PolicyEngine.Settings
    private let metrics: CollectorMetrics
    private let logger: Logger
    private let broadcaster: PolicyBroadcaster
    private let worker: WorkerThread
    private var state: PolicyState

    init(
        database: AppDatabase, settings: PolicyEngine.Settings, metrics: CollectorMetrics, logger: Logger,
        worker: WorkerThread
    ) throws {
        store = PolicyStore(database: database)
        self.worker = worker
        self.settings = settings
        self.metrics = metrics
        self.logger = logger
        broadcaster = try PolicyBroadcaster(
            endpoint: settings.endpoint, snapshotsPerSecond: settings.snapshotsPerSecond,
            snapshotBurst: settings.snapshotBurst, metrics: metrics, logger: logger)
        boundEndpoint = broadcaster.boundEndpoint
        let now = Self.nowMs
        let loaded = try store.load(now: now)
        state = PolicyState(projects: loaded.projects, keys: loaded.keys, spend: loaded.spend, now: now)
        logger.info(
            "policy loaded",
            metadata: [
                "projects": "\(state.projects.count)", "keys": "\(state.keys.count)", "policy": "\(boundEndpoint)",
            ])
    }

    private static var nowMs: Int64 { Int64(Date().timeIntervalSince1970 * 1000) }
    private var nowMs: Int64 { Self.nowMs }

    func run(take: () -> ([@Sendable (any PolicyCommands) -> Void], [SpendEvent], Bool)) {
        var lastBeat = ContinuousClock.now
        var lastReview = ContinuousClock.now
        while true {
            broadcaster.serveSubscriptions(version: state.version) { state.snapshot(now: nowMs) }
            let (jobs, spendEvents, closing) = take()
            for job in jobs { job(self) }
            let now = nowMs
            for event in spendEvents { state.account(event, now: now) }
            let clock = ContinuousClock.now
            if !spendEvents.isEmpty || clock - lastReview >= .milliseconds(250) {
                lastReview = clock
                review()
            }
            if publishChanges() {
                lastBeat = clock
            } else if clock - lastBeat >= settings.beatInterval {
                lastBeat = clock
                broadcaster.beat(version: state.version)
            }
            if closing { break }
            if broadcaster.poll(orReadable: worker.wakeupFD, timeoutMilliseconds: settings.pollMilliseconds) {
                worker.drainWakeups()
            }
        }
        broadcaster.close()
    }

    /// Sends what changed since the last call as one message; returns whether there was anything.
    @discardableResult
    private func publishChanges() -> Bool {
        guard let changes = state.takeChanges(now: nowMs) else { return false }
        broadcaster.publish(
            version: changes.version, keys: changes.keys, projects: changes.projects, removed: changes.removed)
        metrics.policyState(version: changes.version, keys: state.keys.count)
        return true
    }

    /// Rolls periods over and refreshes the budget gauges; denials follow from `publishChanges`.
    private func review() {
        let now = nowMs
        state.roll(to: now)
        for project in state.projects.values {
            let figures = project.budgetPeriod.map { (state.spend[project.id] ?? ProjectSpend()).figures(for: $0) }
            metrics.budget(
                project: project.name, spentUSD: figures?.usd ?? 0, limitUSD: project.budgetMaxUSD,
                spentTokens: figures?.tokens ?? 0, limitTokens: project.budgetMaxTokens,
                denied: state.denial(of: project, now: now) != nil)
        }
    }

    // MARK: Commands

    private func view(_ project: ProjectRecord) -> ProjectView {
        ProjectView(
            project: project,
            activeKeys: state.keys.values.filter { $0.projectID == project.id && !$0.revoked }.count,
            spend: state.spend[project.id] ?? ProjectSpend(), denial: state.denial(of: project, now: nowMs))
    }

    func projects() -> [ProjectView] {
        state.projects.values.sorted { $0.createdAtMs < $1.createdAtMs }.map(view)
    }

    func project(id: String) -> ProjectView? {
        state.projects[id].map(view)
    }

    func createProject(name: String, credentialRef: String) throws -> ProjectView {
        guard !state.projects.values.contains(where: { $0.name == name }) else {
            throw PolicyError.conflict("a project named \(name) already exists")
        }
        let id = VirtualKeySecret.randomID(prefix: "proj_", bytes: 6)
        let project = ProjectRecord(id: id, name: name, credentialRef: credentialRef, createdAtMs: nowMs)
        try store.insert(project)
        state.addProject(project, now: nowMs)
        publishChanges()
        logger.notice(
            "project created",
            metadata: ["project_id": "\(id)", "name": "\(name)", "credential_ref": "\(credentialRef)"])
        return view(project)
    }

    func deleteProject(id: String) throws {
        guard let project = state.projects[id] else { throw PolicyError.notFound("no project \(id)") }
        try store.deleteProject(id: id)
        state.removeProject(id: id)
        metrics.removeBudget(project: project.name)
        publishChanges()
        logger.notice("project deleted", metadata: ["project_id": "\(id)", "name": "\(project.name)"])
    }

    func createKey(_ request: NewKey) throws -> (secret: String, key: VirtualKeyRecord) {
        guard state.projects[request.projectID] != nil else {
            throw PolicyError.invalid("no project \(request.projectID)")
        }
        let (secret, id) = VirtualKeySecret.make()
        let now = nowMs
        let models = String(decoding: try JSONEncoder().encode(request.allowedModels), as: UTF8.self)
        let key = VirtualKeyRecord(
            id: id, projectID: request.projectID, secretSHA256: Data(SHA256.hash(data: Data(secret.utf8))),
            createdAtMs: now,
            expiresAtMs: now + Int64(request.durationHours * 3_600_000), revoked: false, revokedAtMs: nil,
            rateLimitPerHour: request.rateLimitPerHour, maxParallel: request.maxParallel, allowedModels: models
        )
        try store.insert(key)
        state.putKey(key)
        publishChanges()
        logger.notice("virtual key created", metadata: ["key_id": "\(id)", "project_id": "\(request.projectID)"])
        return (secret, key)
    }

    @discardableResult
    func revokeKey(secret: String?, keyID: String?) throws -> VirtualKeyRecord {
        let found: VirtualKeyRecord?
        if let secret {
            let hash = Data(SHA256.hash(data: Data(secret.utf8)))
            found = state.keys.values.first { $0.secretSHA256 == hash }
        } else {
            found = keyID.flatMap { state.keys[$0] }
        }
        guard var key = found else { throw PolicyError.notFound("no such token") }
        if !key.revoked {
            key.revoked = true
            key.revokedAtMs = nowMs
            try store.update(key)
            state.putKey(key)
            publishChanges()
            logger.notice("virtual key revoked", metadata: ["key_id": "\(key.id)", "project_id": "\(key.projectID)"])
        }
        return key
    }

    @discardableResult
    func setBudget(projectID: String, period: BudgetPeriod?, maxUSD: Double? = nil, maxTokens: Int64? = nil) throws
        -> ProjectView
    {
        guard var project = state.projects[projectID] else { throw PolicyError.notFound("no project \(projectID)") }
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
        return view(project)
    }

    func liftDenial(projectID: String) throws {
        guard var project = state.projects[projectID] else { throw PolicyError.notFound("no project \(projectID)") }
        let now = nowMs
        guard let period = project.budgetPeriod, state.denial(of: project, now: now) != nil else {
            throw PolicyError.notFound("project \(projectID) is not denied")
        }
        project.denialLiftedPeriodStartMs = period.bounds(containing: now).start
        try save(project)
        logger.notice("budget denial lifted until the period ends", metadata: ["project_id": "\(projectID)"])
    }

    private func save(_ project: ProjectRecord) throws {
        try store.update(project)
        state.updateProject(project)
        review()
        publishChanges()
    }

    func keyUsage(projectID: String, sinceMs: Int64) throws -> [KeyUsage] {
        try store.keyUsage(projectID: projectID, sinceMs: sinceMs)
    }
}
