"""Process entry points for torchrun / srun / the deepspeed launcher: environment ->
torch.distributed, hostfiles, rendezvous. The training issue fills this in; the SLURM
template it will use is slurm/train_multinode.sbatch."""
