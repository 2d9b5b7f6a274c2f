use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Each embedding worker is one thread. Left alone, candle would split every matrix product of a
    // short prompt across all cores, which is slower (about 23 ms instead of 18 ms for 30 tokens on
    // this project's 2-core machine) and takes cores from the proxy. This runs before any thread
    // starts; an operator's own RAYON_NUM_THREADS wins.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    let cli = watchllm::cli::Cli::parse();
    std::process::exit(watchllm::cli::run(cli));
}
