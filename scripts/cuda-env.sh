# Sets up what `cargo build --features cuda` needs on a machine without a
# GPU or a CUDA toolkit, from PyPI only, and exports it into this shell.
#
#     source scripts/cuda-env.sh            # CUDA 13.0 toolkit pieces
#     source scripts/cuda-env.sh --cudnn    # ... and cuDNN 9 for --features cudnn
#     cargo build --release --features cuda --bin kseg --example train_kits19
#
# CI sources it too (.ci/run, "GPU build compile check": --cudnn, with
# KSEG_CUDA_DIR in a cache folder outside the clone, so a machine downloads
# once: ~720 MB, 2.1 GB with cuDNN, about 2 minutes). What it does, and why
# (see also docs/CUDA.md):
# - pip-installs (--no-deps) nvcc, the CUDA headers, cccl, nvvm, the runtime,
#   nvrtc, cuBLAS and cuRAND 13.0.x into $KSEG_CUDA_DIR (default: .cuda in
#   the repository, git-ignored). 13.0 because cudarc 0.19 refuses newer
#   toolkits than it knows and because PTX from a newer nvcc may be refused
#   by the 13.0 drivers of the machines we run on.
# - adds the unversioned library links the wheels lack (libcudart.so, ...).
# - builds a link stub libcuda.so (no wheel ships the driver): every cu*
#   function cudarc binds, empty. The real libcuda.so.1 of the GPU machine's
#   driver is what the binary loads at run time.
# - exports PATH (cudarc runs `nvcc --version`), CUDA_HOME / CUDA_PATH,
#   CUDA_COMPUTE_CAP (default 90: H100 / H200; set it before sourcing for
#   other cards, e.g. 80 for A100, 89 for L4), and CUDNN_LIB with --cudnn.
#
# Running the binaries needs the driver (libcuda.so.1) and, on
# LD_LIBRARY_PATH, libcudart.so.13, libcublas.so.13, libcublasLt.so.13,
# libcurand.so.10 (libcudnn.so.9): any CUDA 13 install, or PyTorch's
# nvidia/* wheels; scripts/gpu-check.sh finds them.

_kseg_cuda_env() {
    local cudnn=0 arg
    for arg in "$@"; do
        case "$arg" in
            --cudnn) cudnn=1 ;;
            -h|--help) sed -n '2,28p' "${BASH_SOURCE[0]}"; return 0 ;;
            *) echo "cuda-env.sh: unknown argument '$arg' (known: --cudnn)" >&2; return 2 ;;
        esac
    done
    local repo
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || return 1
    local dir="${KSEG_CUDA_DIR:-$repo/.cuda}"
    local py="${PYTHON:-python3}"
    local base=(
        "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*"
        "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-runtime==13.0.*"
        "nvidia-cuda-nvrtc==13.0.*" "nvidia-cublas==13.0.*" "nvidia-curand==10.4.0.*"
    )
    local cudnn_pkgs=("nvidia-cudnn-cu13==9.*")
    # One folder and stamp per package set (pip --target --upgrade replaces
    # the whole nvidia/ folder), so that adding --cudnn later installs only
    # cuDNN, beside the rest.
    _kseg_cuda_install() {
        local target="$dir/$1"
        shift
        local stamp="$target.installed-$(printf '%s\n' "$@" | cksum | cut -d' ' -f1)"
        [ -e "$stamp" ] && return 0
        command -v gcc >/dev/null || { echo "cuda-env.sh: gcc is needed (nvcc's host compiler)" >&2; return 1; }
        echo "cuda-env.sh: installing $# CUDA wheel(s) from PyPI into $dir" >&2
        mkdir -p "$dir" || return 1
        "$py" -m pip install --quiet --disable-pip-version-check --no-deps \
            --upgrade --target "$target" "$@" || {
            echo "cuda-env.sh: pip install failed (is PyPI reachable?)" >&2
            return 1
        }
        touch "$stamp"
    }
    _kseg_cuda_install site "${base[@]}" || return 1
    if [ "$cudnn" = 1 ]; then _kseg_cuda_install cudnn-site "${cudnn_pkgs[@]}" || return 1; fi
    unset -f _kseg_cuda_install
    local cu="$dir/site/nvidia/cu13"
    [ -x "$cu/bin/nvcc" ] || { echo "cuda-env.sh: $cu/bin/nvcc missing after install" >&2; return 1; }

    # Unversioned links: the linker looks for libX.so.
    local lib f
    for lib in "$cu"/lib/lib*.so.* "$dir"/cudnn-site/nvidia/cudnn/lib/libcudnn*.so.*; do
        [ -e "$lib" ] || continue
        f="${lib%%.so.*}.so"
        [ -e "$f" ] || ln -s "$(basename "$lib")" "$f"
    done

    # The driver stub: every cu* function cudarc's driver bindings name.
    if [ ! -e "$cu/lib/stubs/libcuda.so" ]; then
        local cudarc
        local meta
        meta="$(cd "$repo" && cargo metadata --format-version 1 --locked --features cuda 2>"$dir/metadata.err")" || {
            echo "cuda-env.sh: 'cargo metadata' (to locate cudarc for the libcuda stub) failed:" >&2
            cat "$dir/metadata.err" >&2
            return 1
        }
        cudarc="$(printf '%s' "$meta" \
            | "$py" -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc"))')" \
            || { echo "cuda-env.sh: cargo metadata lists no cudarc package" >&2; return 1; }
        cudarc="$(dirname "$cudarc")/src/driver/sys/mod.rs"
        mkdir -p "$cu/lib/stubs"
        grep -ohE '\bfn (cu[A-Za-z0-9_]+)\(' "$cudarc" | sed -E 's/fn (cu[A-Za-z0-9_]+)\(/\1/' | sort -u \
            | sed 's/.*/void &(void) {}/' > "$cu/lib/stubs/libcuda_stub.c"
        gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cu/lib/stubs/libcuda.so" \
            "$cu/lib/stubs/libcuda_stub.c" || { echo "cuda-env.sh: building the libcuda stub failed" >&2; return 1; }
    fi

    export CUDA_HOME="$cu" CUDA_PATH="$cu" CUDA_ROOT="$cu"
    export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
    case ":$PATH:" in *":$cu/bin:"*) ;; *) export PATH="$cu/bin:$PATH" ;; esac
    if [ "$cudnn" = 1 ]; then
        export CUDNN_LIB="$dir/cudnn-site/nvidia/cudnn"
    fi
    echo "cuda-env.sh: $(nvcc --version | sed -n 4p); CUDA_HOME=$CUDA_HOME CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP${CUDNN_LIB:+ CUDNN_LIB=$CUDNN_LIB}" >&2
    echo "cuda-env.sh: a build that ran before this (without the stub folder) needs 'cargo clean -p cudarc'" >&2
}
if ! (return 0 2>/dev/null); then
    echo "cuda-env.sh: source it, so that its exports reach your shell: 'source scripts/cuda-env.sh'" >&2
    exit 2
fi
_kseg_cuda_env "$@"
_kseg_cuda_rc=$?
unset -f _kseg_cuda_env
return $_kseg_cuda_rc
