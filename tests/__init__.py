"""The test suite in three tiers: unit/ (fast, in-process), integration/ (real exports and servers),
deploy/ (container, load balancer, Prometheus and Kubernetes files); shared code in helpers/."""
