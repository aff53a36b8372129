//! Writes a libvirt test-driver node XML for scripts (bench/pass_cost.py),
//! from the same generator the Rust tests use (tests/common/node.rs).
//!
//! Usage: `testdriver-node < domains.json > node.xml`, where domains.json is
//! a JSON array of `{"name", "uuid", "memory_kib", "current_kib",
//! "balloon"}` objects (`balloon` optional, default true). Exit 1 with a
//! message on input that does not parse.

use std::io::{self, Read, Write};
use std::process::ExitCode;

#[allow(dead_code)] // the tests' helpers this tool does not need
#[path = "../tests/common/node.rs"]
mod node;

fn main() -> ExitCode {
    let mut input = String::new();
    if let Err(e) = io::stdin().read_to_string(&mut input) {
        eprintln!("testdriver-node: cannot read stdin: {e}");
        return ExitCode::FAILURE;
    }
    let doms: Vec<node::Dom> = match serde_json::from_str(&input) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("testdriver-node: stdin is not a JSON array of domains: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = io::stdout().write_all(node::node_xml(&doms).as_bytes()) {
        eprintln!("testdriver-node: cannot write stdout: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
