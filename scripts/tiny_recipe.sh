# The tiny chain as README "The tiny chain on a CPU" shows it (the README block is this file; one command a
# line, run from the repository root). tests/training/test_tiny_recipe.py runs these lines with reduced
# iterations; scripts/tiny_model.sh is the resumable version that made models/rsd-tiny.
python scripts/tiny_data.py runs/tiny_data                        # scikit-image photos -> runs/tiny_data
rsd train autoencoder --config configs/tiny_autoencoder.toml   # -> runs/tiny_autoencoder/autoencoder
rsd train teacher     --config configs/tiny_teacher.toml       # -> runs/tiny_teacher/artifact
rsd train distill     --config configs/tiny_distill.toml       # -> runs/tiny_distill/artifact
rsd upscale runs/tiny_data/eval_degraded/lq/coffee.png -o coffee_x4.png --model runs/tiny_distill/artifact
