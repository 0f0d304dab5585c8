# sand-boxer tasks. `just` with no argument lists them.

# List the recipes.
default:
    @just --list

# Build and start sandboxerd on 127.0.0.1:7443 with data under ./data (installs bubblewrap if missing).
run *ARGS:
    bash scripts/run {{ARGS}}

# Install the test dependencies and run every check and test (what CI runs).
test:
    bash scripts/test

# Benchmark the real daemon on bubblewrap against DESIGN.md's targets; writes docs/benchmarks.md (`just bench --quick` for a short run).
bench *ARGS:
    cargo build --release -p sandboxerd
    cargo run --release -p sandboxer-bench -- {{ARGS}}

# Formatting and clippy, warnings as errors.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Regenerate openapi/openapi.json from the code.
openapi:
    cargo run -q -p sandboxerd --bin sandboxerd -- openapi > openapi/openapi.json.tmp || { rm -f openapi/openapi.json.tmp; exit 1; }
    mv openapi/openapi.json.tmp openapi/openapi.json

# Compose stack create→ready through sand-boxer against `docker-compose up -d` by hand over SSH (needs root, docker, sshd).
bench-compose *ARGS:
    cargo build --release -p sandboxerd
    cargo run --release -p sandboxer-bench --bin bench-compose -- {{ARGS}}
