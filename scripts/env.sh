# Sourced by the scripts: data location and allocator settings measured to speed PyTorch up on CPU.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export TANDEM_DATA="${TANDEM_DATA:-$here/../shared/data}"
# glibc malloc returns memory to the OS too eagerly for PyTorch; page faults then cost 30-50% CPU.
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-10000000000}"
export MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-10000000000}"
export MALLOC_TOP_PAD_="${MALLOC_TOP_PAD_:-1000000000}"
