import Foundation
import Wire

/// Projects, virtual keys and spend, and what changed since the sidecars were last told. Pure:
/// the engine stores a change first (`PolicyStore`), then applies it here, and publishes what
/// `takeChanges` returns.
struct PolicyState {
    private(set) var projects: [String: ProjectRecord] = [:]
    private(set) var keys: [String: VirtualKeyRecord] = [:]
    private(set) var spend: [String: ProjectSpend] = [:]
    /// The version the sidecars were last told.
    private(set) var version: UInt64 = 1
    /// Each project's state as last sent, to send only what changed.
    private var sentProjects: [String: PolicyProject] = [:]
    private var changedKeys: Set<String> = []
    private var removedProjects: Set<String> = []

    init(projects: [ProjectRecord], keys: [VirtualKeyRecord], spend: [String: ProjectSpend], now: Int64) {
        for project in projects { self.projects[project.id] = project }
        for key in keys { self.keys[key.id] = key }
        self.spend = spend
        for id in self.projects.keys where self.spend[id] == nil {
            self.spend[id] = ProjectSpend()
            self.spend[id]!.roll(to: now)
        }
        let state = self
        sentProjects = self.projects.mapValues { state.wireProject($0, now: now) }
    }

    // MARK: Changes

    mutating func addProject(_ project: ProjectRecord, now: Int64) {
        projects[project.id] = project
        spend[project.id] = ProjectSpend()
        spend[project.id]!.roll(to: now)
    }

    /// The project, its spend and its keys go.
    mutating func removeProject(id: String) {
        projects[id] = nil
        spend[id] = nil
        keys = keys.filter { $0.value.projectID != id }
        removedProjects.insert(id)
    }

    mutating func updateProject(_ project: ProjectRecord) {
        projects[project.id] = project
    }

    /// A key made or changed (revoked).
    mutating func putKey(_ key: VirtualKeyRecord) {
        keys[key.id] = key
        changedKeys.insert(key.id)
    }

    /// Counts a stored exchange's cost and tokens toward its project's budgets.
    mutating func account(_ event: SpendEvent, now: Int64) {
        guard projects[event.projectID] != nil else { return }
        var figures = spend[event.projectID] ?? ProjectSpend()
        figures.roll(to: now)
        figures.add(event)
        spend[event.projectID] = figures
    }

    /// Starts new periods for every project whose day or month has ended.
    mutating func roll(to now: Int64) {
        for id in projects.keys { spend[id, default: ProjectSpend()].roll(to: now) }
    }

    // MARK: Reading

    func denial(of project: ProjectRecord, now: Int64) -> Budget.Denial? {
        Budget.denial(of: project, spend: spend[project.id] ?? ProjectSpend(), now: now)
    }

    /// Keys long expired or revoked are left out of snapshots: a sidecar answers 401 for them either way.
    private func isWorthSending(_ key: VirtualKeyRecord, now: Int64) -> Bool {
        let dayAgo = now - 86_400_000
        return key.expiresAtMs > dayAgo && (key.revokedAtMs ?? now) > dayAgo
    }

    /// The whole state, for a sidecar that subscribes.
    func snapshot(now: Int64) -> (keys: [PolicyKey], projects: [PolicyProject]) {
        (
            keys.values.filter { isWorthSending($0, now: now) }.map(Self.wireKey),
            projects.values.map { wireProject($0, now: now) }
        )
    }

    /// What changed since the last call, as the next version; nil when nothing did. A project
    /// changes when its record does, or when its denial starts or ends (spend, a new period).
    mutating func takeChanges(now: Int64) -> (
        version: UInt64, keys: [PolicyKey], projects: [PolicyProject], removed: [String]
    )? {
        var changedProjects: [PolicyProject] = []
        let keyChanges = changedKeys.compactMap { keys[$0].map(Self.wireKey) }
        for (id, project) in projects {
            let state = wireProject(project, now: now)
            if sentProjects[id] != state {
                sentProjects[id] = state
                changedProjects.append(state)
            }
        }
        let removed = Array(removedProjects)
        for id in removedProjects { sentProjects[id] = nil }
        changedKeys = []
        removedProjects = []
        guard !keyChanges.isEmpty || !changedProjects.isEmpty || !removed.isEmpty else { return nil }
        version += 1
        return (version, keyChanges, changedProjects, removed)
    }

    static func wireKey(_ key: VirtualKeyRecord) -> PolicyKey {
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
        Self.wireProject(project, denial: denial(of: project, now: now))
    }

    private static func wireProject(_ project: ProjectRecord, denial: Budget.Denial?) -> PolicyProject {
        var wire = PolicyProject()
        wire.projectID = project.id
        wire.name = project.name
        wire.credentialRef = project.credentialRef
        if let denial {
            wire.denied = true
            wire.denialReason = denial.reason
            wire.deniedUntilUnixMs = denial.until ?? 0
        }
        return wire
    }
}
