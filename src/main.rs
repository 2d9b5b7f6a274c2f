use clap::Parser;

fn main() {
    let cli = watchllm::cli::Cli::parse();
    std::process::exit(watchllm::cli::run(cli));
}
