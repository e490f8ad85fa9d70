//! Prints the simulator benchmark (the same as `cargo lab sim`):
//! `cargo run --release -p duplex-core --example sim_bench -- [--seeds N] [--json]`.

use duplex_core::sim::{BenchConfig, benchmark, render_json, render_table};

fn main() {
    let mut config = BenchConfig::default();
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seeds" => match args.next().and_then(|s| s.parse().ok()) {
                Some(n) => config.seeds = n,
                None => {
                    eprintln!("--seeds needs a number");
                    std::process::exit(2);
                }
            },
            "--json" => json = true,
            other => {
                eprintln!("unknown argument {other}; usage: sim_bench [--seeds N] [--json]");
                std::process::exit(2);
            }
        }
    }
    let rows = benchmark(&config);
    print!("{}", render_table(&rows));
    if json {
        println!("{}", render_json(&rows));
    }
}
