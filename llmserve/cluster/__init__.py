"""Beyond one replica: router policies (router.py), where routing decisions are made
(placement.py), the cluster simulator (cluster_sim.py); Ray replicas, tensor parallelism and
the edge/cloud bandit live beside them."""
