import Wire
import XCTest

/// The one parser of authorities and absolute URLs, on its own.
final class AuthorityTests: XCTestCase {
    func testHostsPortsAndBrackets() throws {
        XCTAssertEqual(try Authority("api.openai.com"), Authority(host: "api.openai.com", port: nil))
        XCTAssertEqual(try Authority("127.0.0.1:3000"), Authority(host: "127.0.0.1", port: 3000))
        XCTAssertEqual(try Authority("[::1]:8080"), Authority(host: "::1", port: 8080))
        XCTAssertEqual(try Authority("[::1]"), Authority(host: "::1", port: nil))
        // Without brackets the last colon starts the port.
        XCTAssertEqual(try Authority("::1:3000"), Authority(host: "::1", port: 3000))
        XCTAssertEqual(Authority(host: "::1", port: 443).description, "[::1]:443")
        XCTAssertEqual(Authority(host: "::1", port: nil).bracketedHost, "[::1]")
    }

    func testWhatItRefusesAndWhy() {
        let cases: [(String, Authority.Problem)] = [
            ("", .noHost), (":3000", .noHost), ("[]:1", .noHost), ("host:", .badPort), ("host:65536", .badPort),
            ("host:+80", .badPort), ("host:8a", .badPort), ("[::1", .unclosedBracket), ("[::1]x", .junkAfterBracket),
        ]
        for (text, problem) in cases {
            XCTAssertThrowsError(try Authority(text[...]), text) {
                XCTAssertEqual($0 as? Authority.Problem, problem, text)
            }
        }
    }

    func testDialableHosts() throws {
        XCTAssertTrue(try Authority("Api.OpenAI.com:443").hasDialableHost)
        XCTAssertTrue(try Authority("[2001:db8::1]:443").hasDialableHost)
        XCTAssertFalse(try Authority("a]b:443").hasDialableHost)
        XCTAssertFalse(try Authority("evil%00.com:443").hasDialableHost)
    }

    func testAbsoluteURLs() throws {
        let url = try XCTUnwrap(try AbsoluteURL("HTTPS://api.openai.com/v1/models?x=1"))
        XCTAssertEqual(url.scheme, "https")
        XCTAssertEqual(url.port, 443)
        XCTAssertEqual(url.authority.host, "api.openai.com")
        XCTAssertEqual(url.originForm, "/v1/models?x=1")
        XCTAssertEqual(try AbsoluteURL("http://h:81")?.port, 81)
        XCTAssertEqual(try AbsoluteURL("http://h?q")?.originForm, "/?q")
        XCTAssertNil(try AbsoluteURL("/v1/models"))
        XCTAssertThrowsError(try AbsoluteURL("http://h:x/"))
        XCTAssertEqual(AbsoluteURL.originForm("/v1"), "/v1")
        XCTAssertEqual(AbsoluteURL.originForm("http://h"), "/")
        // The authority is not read for the origin form: what follows it is the path whatever it is.
        XCTAssertEqual(AbsoluteURL.originForm("http://[bad/v1"), "/v1")
        XCTAssertEqual(AbsoluteURL.originForm("v1"), "/v1")
    }

    func testListenAddressesKeepTheirMessages() {
        XCTAssertEqual(try ListenAddress("0.0.0.0:3000").description, "0.0.0.0:3000")
        XCTAssertEqual(try ListenAddress("[::]:3000").host, "::")
        XCTAssertThrowsError(try ListenAddress("nonsense")) {
            XCTAssertEqual("\($0)", "a listen address is host:port, such as 0.0.0.0:3000, not nonsense")
        }
        XCTAssertThrowsError(try ListenAddress(":3000")) {
            XCTAssertEqual("\($0)", "a listen address needs a host, such as 0.0.0.0:3000")
        }
    }
}
