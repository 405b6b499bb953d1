"""Process entry points for torchrun / srun / the deepspeed launcher: `launch.train` (the
training entry point) and `launch.dist` (environment -> torch.distributed). The multi-node
SLURM template that runs them is slurm/train_multinode.sbatch."""
