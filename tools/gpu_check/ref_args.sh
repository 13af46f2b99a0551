# The end-to-end image's parameters, shared by tools/gpu_check/carry.sh (the
# CPU reference, rendered here) and tools/gpu_check.sh (the GPU image).
REF_ARGS=(--prompt "a cozy living room, green sofa, wooden floor, morning light"
          --negative "blurry" --seed 42 --width 512 --height 512 --sampler euler_a --cfg 7.5)
REF_MODEL_ARGS=(make-model --arch sd15 --dtype f16 --seed 1)
