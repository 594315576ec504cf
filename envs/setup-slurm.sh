#!/usr/bin/env bash
# Debian's SLURM and munge daemons, for the test that runs the workflow on a real single-node cluster
# (tests/test_slurm.py starts and stops them itself; nothing is enabled as a service). Needs root.
set -euo pipefail
if [[ -x /usr/sbin/slurmctld && -x /usr/sbin/slurmd && -x /usr/sbin/munged ]] && command -v sbatch >/dev/null; then
  exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
  echo "envs/setup-slurm.sh: installing slurmctld, slurmd and munge needs root; the SLURM test will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends munge slurmctld slurmd slurm-client >/dev/null \
  || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends munge slurmctld slurmd slurm-client >/dev/null; }
echo "set up: slurmd $(dpkg-query -W -f='${Version}' slurmd) (sbatch --version needs a cluster's slurm.conf, which the test writes)"
