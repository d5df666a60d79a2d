#!/usr/bin/env bash
# Lints the container images' recipes without Docker (the development machines have none):
# the package, binary and `cuda` feature the Dockerfiles build exist in the workspace, their
# Rust version is the workspace's rust-version, .cargo/config.toml (x86-64-v3) and every
# workspace member reach the build context past .dockerignore, both images run as uid 10001
# with the binary at /usr/local/bin/openledger, and `--features cuda` resolves to candle's
# CUDA backend (cargo tree: nothing compiled, but the CUDA-only crates are downloaded on a machine
# that has not fetched them yet). hadolint runs too when installed.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> the Dockerfiles against the workspace"
cargo metadata --no-deps --offline --locked --format-version 1 > "${TMPDIR:-/tmp}/openledger-metadata.json"
python3 - "${TMPDIR:-/tmp}/openledger-metadata.json" <<'PY'
import fnmatch, json, os, re, sys

metadata = json.load(open(sys.argv[1]))
failures = []
def check(ok, message):
    print(f"    {'ok  ' if ok else 'FAIL'} {message}")
    if not ok:
        failures.append(message)

packages = {package["name"]: package for package in metadata["packages"]}
cli = packages.get("openledger-cli")
check(cli is not None, "the workspace has the package openledger-cli")
check(cli and any(t["name"] == "openledger" and "bin" in t["kind"] for t in cli["targets"]), "openledger-cli builds the binary `openledger`")
check(cli and cli["features"].get("cuda") == ["openledger-ml/cuda"], "openledger-cli has the feature cuda = [\"openledger-ml/cuda\"]")
rust_version = cli["rust_version"] if cli else None
check(bool(re.search(r'target-cpu=x86-64-v3', open(".cargo/config.toml").read())), ".cargo/config.toml builds for x86-64-v3")

ignored = [line.strip().lstrip("/") for line in open(".dockerignore") if line.strip() and not line.startswith("#")]
def excluded(path):
    return any(fnmatch.fnmatch(path, pattern) or path.startswith(pattern.rstrip("/") + "/") for pattern in ignored)
root = metadata["workspace_root"]
members = [os.path.relpath(os.path.dirname(packages[p["name"]]["manifest_path"]), root) for p in metadata["packages"]]
needed = ["Cargo.toml", "Cargo.lock", ".cargo/config.toml", "proto/openledger"] + sorted(set(members))
lost = [path for path in needed if excluded(path)]
check(not lost, f".dockerignore keeps the manifests, .cargo/config.toml, proto/ and the {len(set(members))} workspace members"
      + (f" (it drops {', '.join(lost)})" if lost else ""))

for dockerfile, features in [("Dockerfile", ""), ("Dockerfile.cuda", " --features cuda")]:
    text = open(dockerfile).read()
    build = f"cargo build --release --locked -p openledger-cli{features}"
    check(build in text, f"{dockerfile} runs `{build}`")
    version = re.search(r"ARG RUST_VERSION=(\S+)", text)
    check(version is not None and rust_version is not None and (version.group(1) + ".0").startswith(rust_version),
          f"{dockerfile} builds with Rust {version.group(1) if version else '?'} (workspace rust-version {rust_version})")
    stages = text.split("\nFROM ")
    runtime = stages[-1]
    check("USER 10001:10001" in runtime, f"{dockerfile}'s runtime stage runs as uid 10001")
    check('ENTRYPOINT ["/usr/local/bin/openledger"]' in runtime, f"{dockerfile}'s entrypoint is /usr/local/bin/openledger")
    check("COPY --from=builder /out/openledger /usr/local/bin/openledger" in runtime, f"{dockerfile} installs the binary at /usr/local/bin/openledger")
sys.exit(1 if failures else 0)
PY

echo "==> --features cuda reaches candle's CUDA backend (cargo tree)"
# Not --offline: cargo reads the manifests of the CUDA-only crates (cudarc, bindgen_cuda, ...),
# which a fresh machine's registry cache does not hold until something asks for them.
if ! tree=$(cargo tree --locked -p openledger-cli --features cuda -e features -i candle-core 2>&1); then
    echo "    FAIL cargo tree -p openledger-cli --features cuda failed:"
    tail -n 5 <<<"$tree" | sed 's/^/         /'
    exit 1
fi
if grep -q 'candle-core feature "cuda"' <<<"$tree"; then
    echo "    ok   openledger-cli/cuda enables candle-core/cuda"
else
    echo "    FAIL openledger-cli --features cuda does not enable candle-core/cuda"
    exit 1
fi

if command -v hadolint >/dev/null 2>&1; then
    echo "==> hadolint"
    hadolint Dockerfile Dockerfile.cuda
else
    echo "==> hadolint is not installed: the Dockerfiles' style is not linted"
fi
echo "==> the image recipes' checks passed"
