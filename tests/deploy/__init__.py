"""The deployment files checked and run: Dockerfile, compose, nginx, Prometheus, Kubernetes."""
