//! Parsing Kubernetes objects (YAML or JSON) and KubeProxyConfiguration into validated types.
