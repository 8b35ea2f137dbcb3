import Foundation

/// A JSON string literal (quotes included) turned into its text.
enum JSONStringLiteral {
    static func decode(_ literal: [UInt8]) throws -> String {
        try JSONDecoder().decode(String.self, from: Data(literal))
    }
}
