# Sourced by benches/ensemble.sh, precision.sh and fast.sh: one definition of
# a synthetic preset's scoring protocol and of its held-out cases, so that
# every script scores the same cases the same way.
#
#     preset_protocol SCRIPT PRESET   sets protocol and cysts (exit 2 on
#                                     another preset, naming SCRIPT)
#     preset_model KSEG PRESET DIR STEPS CKPT
#                                     sets ckpt: CKPT, or else the best
#                                     checkpoint of PRESET trained into
#                                     DIR/run (STEPS steps, or the
#                                     preset's when empty) unless that run
#                                     is there already
#     make_heldout KSEG DIR [ARG...]  16 held-out synthetic cases in DIR
#                                     (seed 7, the presets' generator
#                                     settings, never seen in training;
#                                     ARGs are added to `kseg synth`'s,
#                                     --slices replacing its own, e.g. a
#                                     longer scan), unless DIR has
#                                     them already

preset_protocol() {
    case $2 in
        synthetic-cpu) protocol=kits19; cysts=() ;;
        synthetic-kits23) protocol=kits23; cysts=(--cysts) ;;
        *) echo "$1: --preset synthetic-cpu or synthetic-kits23" >&2; exit 2 ;;
    esac
}

preset_model() {
    ckpt=$5
    if [[ -z $ckpt ]]; then
        ckpt="$3/run/checkpoints/best"
        if [[ ! -d $ckpt ]]; then
            "$1" train --preset "$2" --out "$3/run" --device cpu ${4:+--steps "$4"}
        fi
    fi
}

make_heldout() {
    if [[ ! -f $2/synth.json ]]; then
        local slices=(--slices 32 64)
        if [[ " ${*:3} " == *" --slices "* ]]; then slices=(); fi
        "$1" synth --out "$2" --cases 16 --seed 7 --size 128 128 "${slices[@]}" \
            --fov 240 280 --tumour-radius 14 36 "${cysts[@]}" "${@:3}"
    fi
}
