import Foundation
import NIOCore
import NIOHTTP1
import NIOWebSocket

/// OpenAI's Realtime API as a WebSocket at `/v1/realtime?model=…`, after NIOWebSocket's upgrade:
/// `session.created` at once; `session.update` → `session.updated`; `conversation.item.create` →
/// `conversation.item.created`; `response.create` → `response.created`, text and audio deltas, then
/// `response.done` with usage (`MockRealtimeHandler.usage`, the same every time, so a test knows
/// the sums). Test events: `mock.echo` comes back byte for byte (binary messages too),
/// `mock.fragmented` comes back byte for byte in three frames, `mock.flood` (`count`, `bytes`) sends
/// that many binary messages at once, `mock.error` gets an `error` event,
/// `mock.close` (`"code": N`) closes with that code. Pings get their pong; a Close is answered.
final class MockRealtimeHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    /// The usage each `response.done` reports.
    static var usage: [String: Any] {
        [
            "total_tokens": 270, "input_tokens": 150, "output_tokens": 120,
            "input_token_details": [
                "text_tokens": 100, "audio_tokens": 50, "image_tokens": 0, "cached_tokens": 40,
                "cached_tokens_details": ["text_tokens": 30, "audio_tokens": 10, "image_tokens": 0],
            ],
            "output_token_details": ["text_tokens": 20, "audio_tokens": 100],
        ]
    }

    private let model: String
    private let log: RequestLog?
    private var message: ByteBuffer?
    private var messageOpcode = WebSocketOpcode.text
    private var events = 0
    private var responses = 0
    private var closing = false

    init(model: String, log: RequestLog?) {
        self.model = model
        self.log = log
    }

    func handlerAdded(context: ChannelHandlerContext) {
        send(
            [
                "type": "session.created",
                "session": [
                    "id": "sess_mock", "object": "realtime.session", "model": model, "modalities": ["text", "audio"],
                ],
            ], context: context)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .ping:
            context.writeAndFlush(
                wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)), promise: nil)
        case .connectionClose:
            var data = frame.unmaskedData
            let code = data.readInteger(as: UInt16.self)
            log?.append(["event": "ws_close", "code": Int(code ?? 1005)])
            if !closing {
                closing = true
                var echo = context.channel.allocator.buffer(capacity: 2)
                if let code { echo.writeInteger(code) }
                let channel = context.channel
                context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: echo)))
                    .whenComplete { _ in channel.close(promise: nil) }
            } else {
                context.close(promise: nil)
            }
        case .text, .binary:
            messageOpcode = frame.opcode
            message = frame.unmaskedData
            if frame.fin { received(context: context) }
        case .continuation:
            var data = frame.unmaskedData
            message?.writeBuffer(&data)
            if frame.fin { received(context: context) }
        default:
            break
        }
    }

    private func received(context: ChannelHandlerContext) {
        guard let message else { return }
        self.message = nil
        log?.append([
            "event": "ws_message", "opcode": messageOpcode == .text ? 1 : 2, "bytes": message.readableBytes,
        ])
        guard messageOpcode == .text else {
            context.writeAndFlush(
                wrapOutboundOut(WebSocketFrame(fin: true, opcode: .binary, data: message)), promise: nil)
            return
        }
        let event = (try? JSONSerialization.jsonObject(with: Data(message.readableBytesView))) as? [String: Any]
        switch event?["type"] as? String {
        case "session.update":
            var session = event?["session"] as? [String: Any] ?? [:]
            session["id"] = "sess_mock"
            session["model"] = model
            send(["type": "session.updated", "session": session], context: context)
        case "conversation.item.create":
            send(["type": "conversation.item.created", "item": event?["item"] ?? [:]], context: context)
        case "response.create":
            respond(context: context)
        case "mock.echo":
            context.writeAndFlush(
                wrapOutboundOut(WebSocketFrame(fin: true, opcode: .text, data: message)), promise: nil)
        case "mock.fragmented":
            let third = message.readableBytes / 3
            var rest = message
            let first = rest.readSlice(length: third)!
            let second = rest.readSlice(length: third)!
            context.write(wrapOutboundOut(WebSocketFrame(fin: false, opcode: .text, data: first)), promise: nil)
            context.write(
                wrapOutboundOut(WebSocketFrame(fin: false, opcode: .continuation, data: second)), promise: nil)
            context.writeAndFlush(
                wrapOutboundOut(WebSocketFrame(fin: true, opcode: .continuation, data: rest)), promise: nil)
        case "mock.flood":
            // `count` binary messages of `bytes` each, as fast as they go (for back-pressure tests).
            let bytes = min(event?["bytes"] as? Int ?? 65536, 1 << 20)
            let payload = ByteBuffer(repeating: 0x5A, count: bytes)
            for _ in 0..<min(event?["count"] as? Int ?? 100, 10_000) {
                context.write(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .binary, data: payload)), promise: nil)
            }
            context.flush()
        case "mock.error":
            send(
                [
                    "type": "error",
                    "error": [
                        "type": "invalid_request_error", "code": "mock_error",
                        "message": "the mock was asked for an error",
                    ],
                ], context: context)
        case "mock.close":
            closing = true
            var payload = context.channel.allocator.buffer(capacity: 2)
            payload.writeInteger(UInt16(event?["code"] as? Int ?? 1000))
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: payload)))
                .whenComplete { _ in }
        default:
            break
        }
    }

    /// A response: created, a text delta, an audio delta and its transcript, then done with usage.
    private func respond(context: ChannelHandlerContext) {
        responses += 1
        let id = "resp_mock_\(responses)"
        send(
            [
                "type": "response.created",
                "response": ["id": id, "object": "realtime.response", "status": "in_progress"],
            ],
            context: context)
        send(
            ["type": "response.output_text.delta", "response_id": id, "delta": "Hello from the mock"], context: context)
        send(
            [
                "type": "response.output_audio.delta", "response_id": id,
                "delta": Data(repeating: 7, count: 96).base64EncodedString(),
            ],
            context: context)
        send(["type": "response.output_audio_transcript.delta", "response_id": id, "delta": "Hello"], context: context)
        send(
            [
                "type": "response.done",
                "response": [
                    "id": id, "object": "realtime.response", "status": "completed",
                    "output": [
                        [
                            "type": "message", "role": "assistant",
                            "content": [["type": "output_text", "text": "Hello from the mock"]],
                        ]
                    ],
                    "usage": Self.usage,
                ],
            ], context: context)
    }

    private func send(_ event: [String: Any], context: ChannelHandlerContext) {
        events += 1
        var rest = event
        let type = rest.removeValue(forKey: "type") as? String ?? ""
        // "type" first, as OpenAI sends it, then "event_id", then the rest.
        var text = "{\"type\":\"\(type)\",\"event_id\":\"event_\(events)\""
        if !rest.isEmpty, let data = try? JSONSerialization.data(withJSONObject: rest, options: [.sortedKeys]) {
            text += "," + String(decoding: data.dropFirst(), as: UTF8.self)
        } else {
            text += "}"
        }
        context.writeAndFlush(
            wrapOutboundOut(WebSocketFrame(fin: true, opcode: .text, data: ByteBuffer(string: text))), promise: nil)
    }
}

extension MockRealtimeHandler {
    /// Upgrades `GET /v1/realtime…` with an accepted key (when keys are set); anything else stays
    /// HTTP, and the provider handler answers it (401 for a key it does not accept).
    static func upgrader(settings: MockSettings, log: RequestLog?)
        -> NIOWebSocketServerUpgrader
    {
        return NIOWebSocketServerUpgrader(
            maxFrameSize: 1 << 26,
            shouldUpgrade: { channel, head in
                let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
                guard path == "/v1/realtime" else { return channel.eventLoop.makeSucceededFuture(nil) }
                let control = MockControl(head.headers, defaults: settings)
                guard control.status == nil else { return channel.eventLoop.makeSucceededFuture(nil) }
                log?.append([
                    "method": head.method.rawValue, "path": head.uri, "websocket": true,
                    "headers": Dictionary(
                        head.headers.map { ($0.name.lowercased(), $0.value) }, uniquingKeysWith: { "\($0), \($1)" }),
                ])
                var headers = HTTPHeaders()
                if let subprotocol = head.headers.first(name: "sec-websocket-protocol")?.split(separator: ",").first {
                    headers.add(name: "sec-websocket-protocol", value: subprotocol.trimmingCharacters(in: .whitespaces))
                }
                return channel.eventLoop.makeSucceededFuture(headers)
            },
            upgradePipelineHandler: { channel, head in
                let model =
                    URLComponents(string: head.uri)?.queryItems?.first(where: { $0.name == "model" })?.value
                    ?? "gpt-realtime"
                return channel.eventLoop.makeCompletedFuture {
                    if let handler = try? channel.pipeline.syncOperations.handler(type: MockProviderHandler.self) {
                        channel.pipeline.syncOperations.removeHandler(handler, promise: nil)
                    }
                    try channel.pipeline.syncOperations.addHandler(MockRealtimeHandler(model: model, log: log))
                }
            })
    }
}
