import NIOCore

/// A virtual key limited to some models: the request's body is held to its end, and forwarded only
/// if its top-level `model` is one of them. Pure: `ExchangeStateMachine` asks it.
enum ModelCheck {
    /// The refusal for a request whose body names none of the allowed models; nil when it may go.
    static func refusal(_ parts: [UpstreamRequestPart], allowed: Set<String>) -> ProxyErrorResponse? {
        var body: [UInt8] = []
        for case .body(let buffer) in parts { body.append(contentsOf: buffer.readableBytesView) }
        switch ModelScanner.topLevelModel(body) {
        case .model(let model) where allowed.contains(model):
            return nil
        case .model(let model):
            return PolicyGate.refusal(
                .forbidden, "model_not_allowed", "this virtual key may not use the model \(model)")
        case .none, .unreadable:
            return PolicyGate.refusal(
                .forbidden, "model_not_allowed",
                "this virtual key is limited to some models, and the request names none")
        }
    }

    /// The answer once the held body passes `limit` bytes: it can't be checked.
    static func tooLarge(limit: Int) -> ProxyErrorResponse {
        ProxyErrorResponse(
            status: .payloadTooLarge, type: "invalid_request_error", code: "request_too_large",
            message:
                "this virtual key is limited to some models, and a request body over \(limit) bytes can't be checked",
            rejectReason: "model_not_allowed")
    }
}
