#!/bin/bash

# Parameters
#SBATCH --account=phys
#SBATCH --array=0-11%4
#SBATCH --constraint=a100
#SBATCH --cpus-per-task=8
#SBATCH --exclusive
#SBATCH --gpus-per-node=2
#SBATCH --job-name=hpcvit-s
#SBATCH --mem=32GB
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --open-mode=append
#SBATCH --output=<SWEEP_ROOT>/sweep/submitit/%A_%a_0_log.out
#SBATCH --partition=gpu
#SBATCH --qos=normal
#SBATCH --requeue
#SBATCH --signal=USR2@180
#SBATCH --time=240
#SBATCH --wckey=submitit

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output <SWEEP_ROOT>/sweep/submitit/%A_%a_%t_log.out <PYTHON> -u -m submitit.core._submit <SWEEP_ROOT>/sweep/submitit
