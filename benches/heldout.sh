# Sourced by benches/ensemble.sh and benches/precision.sh: one definition of
# a synthetic preset's scoring protocol and of its held-out cases, so that
# both scripts score the same cases the same way.
#
#     preset_protocol SCRIPT PRESET   sets protocol and cysts (exit 2 on
#                                     another preset, naming SCRIPT)
#     make_heldout KSEG DIR           16 held-out synthetic cases in DIR
#                                     (seed 7, the presets' generator
#                                     settings, never seen in training),
#                                     unless DIR has them already

preset_protocol() {
    case $2 in
        synthetic-cpu) protocol=kits19; cysts=() ;;
        synthetic-kits23) protocol=kits23; cysts=(--cysts) ;;
        *) echo "$1: --preset synthetic-cpu or synthetic-kits23" >&2; exit 2 ;;
    esac
}

make_heldout() {
    if [[ ! -f $2/synth.json ]]; then
        "$1" synth --out "$2" --cases 16 --seed 7 --size 128 128 --slices 32 64 \
            --fov 240 280 --tumour-radius 14 36 "${cysts[@]}"
    fi
}
