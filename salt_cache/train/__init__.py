"""Training engine shared by both stages, and Stage 1 (V-Pixel teacher).

config  typed run configs (TrainConfig and its sections), YAML + CLI overrides
optim   AdamW param groups, LR / weight-decay schedules, gradient clipping
data    webdataset pipeline with a pluggable per-sample stage; validation set
engine  one optimizer step (accumulation, bf16 autocast, DDP), evaluation, log averages, fit(Stage)
memory  the CPU memory estimate that refuses a run that cannot fit, before it starts
runs    run folder, run-state checkpoints, exact resume, load_run_encoder
teacher Stage 1: V-Pixel pixel reconstruction -> teacher.pt
student Stage 2: SALT student + predictor on cached latents -> student.pt
"""
