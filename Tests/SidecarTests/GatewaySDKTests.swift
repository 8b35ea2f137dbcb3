import Foundation
import TestSupport
import Wire
import XCTest

/// The official `openai` and `anthropic` packages through one gateway sidecar: routed by `Host`
/// and by `path_prefix`, streaming and not, each client's key swapped for its provider's, and no
/// key of either kind in a record on the wire.
final class GatewaySDKTests: XCTestCase {
    func testTheOfficialClientsAreRoutedByHostAndPathWithTheirKeysSwapped() throws {
        let (openai, claude) = (
            try MockProvider(arguments: ["--event-delay-ms", "2"]),
            try MockProvider(arguments: ["--event-delay-ms", "2"])
        )
        let collector = try RawFrameCollector()
        let port = try freeTCPPort()
        let folder = try makeFolder()
        let (sidecar, _) = try startGateway(
            """
            http_port: \(port)
            http_bind_address: 127.0.0.1
            auth_keys: [team-client-key-1]
            providers:
              - name: openai-main
                type: openai
                host: "127.0.0.1:\(port)"
                endpoint: 127.0.0.1
                port: \(openai.port)
                tls: false
                api_key: sk-openai-provider-secret
              - name: claude
                type: anthropic
                host: localhost
                path_prefix: /anthropic
                endpoint: 127.0.0.1
                port: \(claude.port)
                tls: false
                api_key: sk-ant-provider-secret
            llmtap: {collector: "\(collector.endpoint)"}
            """, in: folder)
        defer {
            sidecar.signal(SIGTERM)
            _ = sidecar.waitForExit()
            for mock in [openai, claude] { mock.process.signal(SIGTERM) }
            collector.stop()
        }
        let script = """
            import json, sys
            from openai import OpenAI
            from anthropic import Anthropic
            port, key = sys.argv[1], sys.argv[2]
            oa = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
            chat = oa.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            pieces = []
            for chunk in oa.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                                    stream=True):
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
            an = Anthropic(base_url=f"http://localhost:{port}/anthropic", api_key=key, max_retries=0)
            message = an.messages.create(model="claude-sonnet-4-20250514", max_tokens=32,
                                         messages=[{"role": "user", "content": "hi"}])
            streamed = []
            with an.messages.stream(model="claude-sonnet-4-20250514", max_tokens=32,
                                    messages=[{"role": "user", "content": "hi"}]) as stream:
                for text in stream.text_stream:
                    streamed.append(text)
                final = stream.get_final_message()
            # A wrong key: the gateway's 401, as the SDK raises it.
            refused = None
            try:
                Anthropic(base_url=f"http://localhost:{port}/anthropic", api_key="not-a-team-key", max_retries=0
                          ).messages.create(model="claude-sonnet-4-20250514", max_tokens=8,
                                            messages=[{"role": "user", "content": "hi"}])
            except Exception as error:
                refused = getattr(error, "status_code", None)
            print(json.dumps({"chat": chat.choices[0].message.content, "chat_stream": "".join(pieces),
                              "message": message.content[0].text, "message_stream": "".join(streamed),
                              "stream_usage": final.usage.output_tokens, "refused": refused}))
            """
        let run = try runPython(script, arguments: ["\(port)", "team-client-key-1"])
        XCTAssertEqual(run.status, 0, run.stderr + sidecar.stderr)
        let result = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(result["chat"] as? String, "Hello! How can I help")
        XCTAssertEqual(result["chat_stream"] as? String, "Hello! How can I help")
        XCTAssertFalse((result["message"] as? String ?? "").isEmpty, "\(result)")
        XCTAssertEqual(result["message_stream"] as? String, result["message"] as? String)
        XCTAssertNotNil(result["stream_usage"] as? Int)
        XCTAssertEqual(result["refused"] as? Int, 401)

        // Each provider got its own requests, with its own key, never the client's.
        XCTAssertEqual(openai.requests.map(\.path), ["/v1/chat/completions", "/v1/chat/completions"])
        XCTAssertEqual(claude.requests.map(\.path), ["/v1/messages", "/v1/messages"], "the prefix is taken off")
        for request in openai.requests {
            XCTAssertEqual(request.headers["authorization"], "Bearer sk-openai-provider-secret")
        }
        for request in claude.requests {
            XCTAssertEqual(request.headers["x-api-key"], "sk-ant-provider-secret")
            XCTAssertNil(request.headers["authorization"])
            XCTAssertNotNil(request.headers["anthropic-version"], "the SDK's own version header is kept")
        }

        // The wire: five exchanges (the refused one too), and no key in any frame.
        XCTAssertTrue(
            eventually {
                collector.envelopes.filter { if case .responseDone = $0.record { true } else { false } }.count >= 5
            })
        let wire = collector.rawFrames.reduce(into: [UInt8]()) { $0 += $1 }
        for secret in ["sk-openai-provider-secret", "sk-ant-provider-secret", "team-client-key-1", "not-a-team-key"] {
            XCTAssertNil(Data(wire).range(of: Data(secret.utf8)), "\(secret) on the wire")
            XCTAssertFalse(sidecar.stderr.contains(secret), "\(secret) in the log")
        }
    }
}
