//! Parsing Kubernetes objects (YAML or JSON) and KubeProxyConfiguration into validated types.
//!
//! This is the edge of the core: text comes in, and [`Snapshot`] / [`ProxyConfig`] come out. Every
//! IP address, CIDR, port and enum-like string is checked here, so later stages never see one that
//! does not parse.
//!
//! [`parse_snapshot`] accepts what `kubectl get services,endpointslices,nodes -A -o yaml` (or
//! `-o json`) prints, multi-document YAML, a JSON array of objects, or concatenated JSON objects.
//! Lists (`kind: List`, `kind: ServiceList`, ...) may appear anywhere and are flattened. Services
//! (`v1`), EndpointSlices (`discovery.k8s.io/v1`), Nodes (`v1`) and ServiceCIDRs
//! (`networking.k8s.io/v1`) are kept; any other kind is skipped with a [`Warning`].
//!
//! [`parse_config`] reads a `KubeProxyConfiguration` (see [`ConfigError`] for what is rejected).

mod proxy_config;
mod strict;

pub use proxy_config::{
    parse_config, parse_daemon_config, parse_duration, validate_table_name, ConfigError,
    ConntrackSettings, DaemonConfig,
};

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::discovery::v1 as discoveryv1;
use k8s_openapi::api::networking::v1 as networkingv1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::{DeserializeOwned, DeserializeSeed};
use serde_json::Value;

#[cfg(doc)]
use crate::config::ProxyConfig;
use crate::snapshot::{
    AddressType, Endpoint, EndpointSlice, IpFamily, Node, ObjectName, Protocol, Service,
    ServicePort, ServiceType, SlicePort, Snapshot, TrafficPolicy, Warning,
};

/// Default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours), as in Kubernetes.
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
/// Largest `sessionAffinityConfig.clientIP.timeoutSeconds` Kubernetes accepts (1 day).
const MAX_AFFINITY_TIMEOUT: i64 = 86_400;
/// The largest snapshot [`parse_snapshot`] reads: 1 GiB (100k services with 10 endpoints each
/// take about 180 MB as JSON).
pub const MAX_SNAPSHOT_BYTES: usize = 1 << 30;
/// Namespace assumed for namespaced objects without `metadata.namespace`.
const DEFAULT_NAMESPACE: &str = "default";

/// A parsed snapshot with the warnings produced while reading it.
#[derive(Debug, Clone, Default)]
pub struct ParsedSnapshot {
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Objects or parts skipped (unknown kinds, invalid endpoint addresses, ...).
    pub warnings: Vec<Warning>,
}

/// Why a snapshot could not be read.
///
/// `object` fields read like `service default/web`, `endpointslice default/web-abc12` or
/// `node node-a`; `field` fields are paths such as `spec.ports[1].port`.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The input is not valid YAML.
    #[error("invalid yaml: {0}")]
    Yaml(serde_yaml::Error),
    /// The input looks like JSON but is neither valid JSON nor valid YAML.
    #[error("invalid json: {0}")]
    Json(serde_json::Error),
    /// An item is not a mapping.
    #[error(
        "object #{index}: not a kubernetes object (expected a mapping with apiVersion and kind)"
    )]
    NotAnObject {
        /// 1-based position of the object in the input, after lists are flattened.
        index: usize,
    },
    /// An object has no string `apiVersion` or `kind`.
    #[error("object #{index} (name {name:?}): {field} is missing")]
    MissingTypeField {
        /// 1-based position of the object in the input, after lists are flattened.
        index: usize,
        /// `metadata.name`, empty if absent.
        name: String,
        /// `apiVersion` or `kind`.
        field: &'static str,
    },
    /// A Service, EndpointSlice or Node has no (or an empty) `metadata.name`.
    #[error("{kind} (object #{index}): metadata.name is missing")]
    MissingName {
        /// The object's kind, lowercase.
        kind: String,
        /// 1-based position of the object in the input, after lists are flattened.
        index: usize,
    },
    /// The object does not have the shape of its Kubernetes type (wrong field type, ...).
    #[error("{object}: {path}: {message}")]
    Decode {
        /// The object.
        object: String,
        /// Where in the object, e.g. `spec.ports[0].port` (`(top level)` for the object itself).
        path: String,
        /// What the decoder expected.
        message: String,
    },
    /// A field that must hold an IP address does not.
    #[error("{object}: {field}: {value:?} is not a valid ip address")]
    InvalidIp {
        /// The object.
        object: String,
        /// The field.
        field: String,
        /// The offending value.
        value: String,
    },
    /// A field that must hold a CIDR does not.
    #[error("{object}: {field}: {value:?} is not a valid cidr")]
    InvalidCidr {
        /// The object.
        object: String,
        /// The field.
        field: String,
        /// The offending value.
        value: String,
    },
    /// A port number outside `1..=65535`.
    #[error("{object}: {field}: {value} is not a valid port")]
    InvalidPort {
        /// The object.
        object: String,
        /// The field.
        field: String,
        /// The offending value.
        value: i64,
    },
    /// A required field is missing (or holds the zero value, which decodes the same).
    #[error("{object}: {field}: required value is missing")]
    Required {
        /// The object.
        object: String,
        /// The field.
        field: String,
    },
    /// A field that the API server would refuse in combination with another.
    #[error("{object}: {field}: {message}")]
    Invalid {
        /// The object.
        object: String,
        /// The field.
        field: String,
        /// What is wrong, as the API server would say it.
        message: String,
    },
    /// The input is larger than [`MAX_SNAPSHOT_BYTES`].
    #[error(
        "the input is {size} bytes, more than the {MAX_SNAPSHOT_BYTES} bytes a snapshot may have"
    )]
    TooLarge {
        /// Its size in bytes.
        size: usize,
    },
    /// A number outside the range Kubernetes allows for the field.
    #[error("{object}: {field}: {value} is out of range ({expected})")]
    OutOfRange {
        /// The object.
        object: String,
        /// The field.
        field: String,
        /// The offending value.
        value: i64,
        /// The allowed range.
        expected: &'static str,
    },
    /// An enum-like string field holds a value the proxy does not know.
    #[error("{object}: {field}: unsupported value {value:?} (expected {expected})")]
    UnsupportedValue {
        /// The object.
        object: String,
        /// The field.
        field: String,
        /// The offending value.
        value: String,
        /// The accepted values.
        expected: &'static str,
    },
}

/// Reads a `kind: List`, multi-document YAML or JSON.
///
/// Empty YAML documents are ignored. Duplicate objects (same kind and `namespace/name`) are
/// resolved in favour of the last one, with a warning. Namespaced objects without
/// `metadata.namespace` are taken to be in `default`.
pub fn parse_snapshot(input: &str) -> Result<ParsedSnapshot, ParseError> {
    if input.len() > MAX_SNAPSHOT_BYTES {
        return Err(ParseError::TooLarge { size: input.len() });
    }
    let mut parsed = ParsedSnapshot::default();
    let mut skipped = Skipped::default();
    let mut position = 0;
    for document in read_documents(input)? {
        let mut objects = Vec::new();
        flatten_lists(document, &mut objects);
        for object in objects {
            position += 1;
            parsed.add_object(object, position, &mut skipped)?;
        }
    }
    let mut skipped: Vec<_> = skipped.into_iter().collect();
    skipped.sort_by_key(|(_, (first, ..))| *first);
    for ((api_version, kind), (_, count, first)) in skipped {
        let message = match count {
            1 => format!("{api_version} {kind} is not used by the proxy; skipped"),
            n => format!(
                "{api_version} {kind} is not used by the proxy; {n} objects of this kind skipped"
            ),
        };
        parsed.warn(first, message);
    }
    Ok(parsed)
}

/// Objects of kinds the proxy does not read, per apiVersion and kind: how many, and the label of
/// the first (one warning per kind, not per object: a dump of a whole cluster has many), in the
/// order of first appearance.
type Skipped = BTreeMap<(String, String), (usize, usize, String)>;

/// Converts a typed Service (as a watch delivers it) into the validated type. Namespace `default`
/// is assumed when `metadata.namespace` is unset, as in [`parse_snapshot`].
pub fn service_from_k8s(service: &corev1::Service) -> Result<Service, ParseError> {
    let name = object_name(&service.metadata, "service")?;
    let label = format!("service {name}");
    convert_service(service.clone(), name, &label)
}

/// Converts a typed EndpointSlice; endpoints with unusable addresses are dropped and reported as
/// warnings.
pub fn endpoint_slice_from_k8s(
    slice: &discoveryv1::EndpointSlice,
) -> Result<(EndpointSlice, Vec<Warning>), ParseError> {
    let name = object_name(&slice.metadata, "endpointslice")?;
    let label = format!("endpointslice {name}");
    let mut parsed = ParsedSnapshot::default();
    let slice = parsed.convert_slice(slice.clone(), name, &label)?;
    Ok((slice, parsed.warnings))
}

/// Converts a typed Node; unparsable addresses are dropped and reported as warnings.
pub fn node_from_k8s(node: &corev1::Node) -> Result<(Node, Vec<Warning>), ParseError> {
    let name = node
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ParseError::MissingName {
            kind: "node".to_owned(),
            index: 1,
        })?;
    let label = format!("node {name}");
    let mut parsed = ParsedSnapshot::default();
    let node = parsed.convert_node(node.clone(), name, &label)?;
    Ok((node, parsed.warnings))
}

/// Converts a typed ServiceCIDR (`networking.k8s.io/v1`) into its name and CIDRs.
pub fn service_cidr_from_k8s(
    cidr: &networkingv1::ServiceCIDR,
) -> Result<(String, Vec<IpNet>), ParseError> {
    let name = cidr
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ParseError::MissingName {
            kind: "servicecidr".to_owned(),
            index: 1,
        })?;
    let label = format!("servicecidr {name}");
    let cidrs = cidr
        .spec
        .as_ref()
        .and_then(|s| s.cidrs.as_ref())
        .map(|list| {
            list.iter()
                .enumerate()
                .map(|(i, c)| cidr_field(&label, &format!("spec.cidrs[{i}]"), c))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    Ok((name, cidrs))
}

/// `namespace/name` of a namespaced object from its metadata.
fn object_name(metadata: &ObjectMeta, kind: &str) -> Result<ObjectName, ParseError> {
    let name = metadata
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ParseError::MissingName {
            kind: kind.to_owned(),
            index: 1,
        })?;
    let namespace = metadata
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE);
    Ok(ObjectName::new(namespace, name))
}

/// Splits the input into documents: JSON (one or more concatenated values) if it starts like
/// JSON and parses as such, YAML otherwise.
fn read_documents(input: &str) -> Result<Vec<Value>, ParseError> {
    let trimmed = input.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let json = read_json(input);
        return match json {
            Ok(documents) => Ok(documents),
            // A YAML flow mapping also starts with `{`: only report the JSON error if it is not
            // YAML either, since then the JSON error (with its line and column) is the useful one.
            Err(json_error) => read_yaml(input).map_err(|_| ParseError::Json(json_error)),
        };
    }
    read_yaml(input)
}

/// Reads concatenated JSON values, rejecting duplicate keys.
fn read_json(input: &str) -> Result<Vec<Value>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(input);
    let mut out = Vec::new();
    loop {
        // Whitespace between and after values is allowed; `end` fails only on other trailing text.
        if de.end().is_ok() {
            return Ok(out);
        }
        out.push(strict::Strict { yaml: false }.deserialize(&mut de)?);
    }
}

/// Reads every document of a YAML stream, rejecting duplicate keys and applying merge keys.
fn read_yaml(input: &str) -> Result<Vec<Value>, ParseError> {
    serde_yaml::Deserializer::from_str(input)
        .map(|document| {
            strict::Strict { yaml: true }
                .deserialize(document)
                .map_err(ParseError::Yaml)
        })
        .collect()
}

/// Appends the objects in `value` to `out`, expanding arrays and `*List` objects; drops nulls
/// (empty documents).
fn flatten_lists(value: Value, out: &mut Vec<Value>) {
    match value {
        Value::Null => {}
        Value::Array(items) => items.into_iter().for_each(|item| flatten_lists(item, out)),
        Value::Object(mut map) if is_list(&map) => {
            if let Some(Value::Array(items)) = map.remove("items") {
                items.into_iter().for_each(|item| flatten_lists(item, out));
            }
        }
        other => out.push(other),
    }
}

/// `kind: List` or `kind: ServiceList` (etc.) whose `items` is an array, null or absent.
fn is_list(map: &serde_json::Map<String, Value>) -> bool {
    let kind_is_list = map
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k.ends_with("List"));
    kind_is_list && matches!(map.get("items"), None | Some(Value::Null | Value::Array(_)))
}

/// `metadata.<key>` of a raw object, if it is a non-empty string.
fn metadata_str<'a>(object: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a str> {
    object
        .get("metadata")
        .and_then(|metadata| metadata.get(key))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The kinds the proxy reads.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Service,
    EndpointSlice,
    Node,
    ServiceCidr,
}

impl ParsedSnapshot {
    /// Dispatches one object on its apiVersion and kind.
    fn add_object(
        &mut self,
        object: Value,
        index: usize,
        skipped: &mut Skipped,
    ) -> Result<(), ParseError> {
        let Value::Object(map) = &object else {
            return Err(ParseError::NotAnObject { index });
        };
        let api_version = map.get("apiVersion").and_then(Value::as_str);
        let kind_str = map.get("kind").and_then(Value::as_str);
        let name = metadata_str(map, "name").map(str::to_owned);
        let (api_version, kind_str) = match (api_version, kind_str) {
            (Some(api_version), Some(kind)) => (api_version, kind),
            (api_version, _) => {
                let field = if api_version.is_none() {
                    "apiVersion"
                } else {
                    "kind"
                };
                let name = name.unwrap_or_default();
                return Err(ParseError::MissingTypeField { index, name, field });
            }
        };
        let namespace = metadata_str(map, "namespace").map(str::to_owned);
        let kind = match (api_version, kind_str) {
            ("v1", "Service") => Kind::Service,
            ("discovery.k8s.io/v1", "EndpointSlice") => Kind::EndpointSlice,
            ("v1", "Node") => Kind::Node,
            ("networking.k8s.io/v1", "ServiceCIDR") => Kind::ServiceCidr,
            _ => {
                let object = match (&namespace, &name) {
                    (Some(namespace), Some(name)) => format!("{kind_str} {namespace}/{name}"),
                    (None, Some(name)) => format!("{kind_str} {name}"),
                    (_, None) => format!("{kind_str} (object #{index})"),
                };
                skipped
                    .entry((api_version.to_owned(), kind_str.to_owned()))
                    .or_insert((index, 0, object))
                    .1 += 1;
                return Ok(());
            }
        };
        let Some(name) = name else {
            return Err(ParseError::MissingName {
                kind: kind_str.to_ascii_lowercase(),
                index,
            });
        };
        match kind {
            Kind::Service => {
                let name = ObjectName::new(namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE), name);
                let label = format!("service {name}");
                let service = convert_service(decode(object, &label)?, name.clone(), &label)?;
                if self
                    .snapshot
                    .services
                    .insert(name.clone(), service)
                    .is_some()
                {
                    self.warn_duplicate(format!("Service {name}"));
                }
            }
            Kind::EndpointSlice => {
                let name = ObjectName::new(namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE), name);
                let label = format!("endpointslice {name}");
                let slice = self.convert_slice(decode(object, &label)?, name.clone(), &label)?;
                if self.snapshot.slices.insert(name.clone(), slice).is_some() {
                    self.warn_duplicate(format!("EndpointSlice {name}"));
                }
            }
            Kind::ServiceCidr => {
                let label = format!("servicecidr {name}");
                let cidr: networkingv1::ServiceCIDR = decode(object, &label)?;
                let (name, cidrs) = service_cidr_from_k8s(&cidr)?;
                if self
                    .snapshot
                    .service_cidrs
                    .insert(name.clone(), cidrs)
                    .is_some()
                {
                    self.warn_duplicate(format!("ServiceCIDR {name}"));
                }
            }
            Kind::Node => {
                let label = format!("node {name}");
                let node = self.convert_node(decode(object, &label)?, name.clone(), &label)?;
                if self.snapshot.nodes.insert(name.clone(), node).is_some() {
                    self.warn_duplicate(format!("Node {name}"));
                }
            }
        }
        Ok(())
    }

    fn warn(&mut self, object: String, message: String) {
        self.warnings.push(Warning { object, message });
    }

    fn warn_duplicate(&mut self, object: String) {
        self.warn(object, "duplicate object; the last one wins".to_owned());
    }

    /// Validates an EndpointSlice; bad endpoint addresses are dropped with a warning.
    fn convert_slice(
        &mut self,
        slice: discoveryv1::EndpointSlice,
        name: ObjectName,
        object: &str,
    ) -> Result<EndpointSlice, ParseError> {
        let labels = slice.metadata.labels.unwrap_or_default();
        let address_type = match slice.address_type.as_str() {
            "IPv4" => AddressType::Ipv4,
            "IPv6" => AddressType::Ipv6,
            "FQDN" => AddressType::Fqdn,
            other => {
                return Err(unsupported(
                    object,
                    "addressType",
                    other,
                    "IPv4, IPv6 or FQDN",
                ));
            }
        };
        let mut ports = Vec::new();
        for (i, port) in slice.ports.unwrap_or_default().into_iter().enumerate() {
            let Some(number) = port.port else { continue };
            ports.push(SlicePort {
                name: port.name.unwrap_or_default(),
                protocol: protocol(
                    object,
                    &format!("ports[{i}].protocol"),
                    port.protocol.as_deref(),
                )?,
                port: port_number(object, &format!("ports[{i}].port"), number)?,
            });
        }
        let mut endpoints = Vec::new();
        let warning_object = format!("EndpointSlice {name}");
        // FQDN slices carry no addresses the proxy can use.
        if let Some(family) = address_type.family() {
            for (i, endpoint) in slice.endpoints.into_iter().enumerate() {
                let Some(address) = endpoint.addresses.first() else {
                    self.warn(
                        warning_object.clone(),
                        format!("endpoints[{i}]: no addresses; endpoint skipped"),
                    );
                    continue;
                };
                let Ok(ip) = address.parse::<IpAddr>() else {
                    self.warn(
                        warning_object.clone(),
                        format!("endpoints[{i}]: address {address:?} is not a valid ip address; endpoint skipped"),
                    );
                    continue;
                };
                if IpFamily::of(&ip) != family {
                    self.warn(
                        warning_object.clone(),
                        format!(
                            "endpoints[{i}]: address {address:?} is not {} as addressType requires; endpoint skipped",
                            slice.address_type
                        ),
                    );
                    continue;
                }
                if let Some(what) = unusable_endpoint(&ip) {
                    self.warn(
                        warning_object.clone(),
                        format!("endpoints[{i}]: address {address:?} is {what} and cannot be a pod's; endpoint skipped"),
                    );
                    continue;
                }
                let conditions = endpoint.conditions.unwrap_or_default();
                let ready = conditions.ready.unwrap_or(true);
                let hints = endpoint.hints.unwrap_or_default();
                endpoints.push(Endpoint {
                    address: ip,
                    ready,
                    serving: conditions.serving.unwrap_or(ready),
                    terminating: conditions.terminating.unwrap_or(false),
                    node_name: endpoint.node_name,
                    zone: endpoint.zone,
                    hint_zones: hints
                        .for_zones
                        .unwrap_or_default()
                        .into_iter()
                        .map(|z| z.name)
                        .collect(),
                    hint_nodes: hints
                        .for_nodes
                        .unwrap_or_default()
                        .into_iter()
                        .map(|n| n.name)
                        .collect(),
                });
            }
        }
        let service_name = labels.get("kubernetes.io/service-name").cloned();
        if service_name.is_none() {
            self.warn(
                warning_object,
                "no kubernetes.io/service-name label: it belongs to no Service and is not used"
                    .to_owned(),
            );
        }
        Ok(EndpointSlice {
            name,
            service_name,
            address_type,
            headless_label: labels.contains_key("service.kubernetes.io/headless"),
            ports,
            endpoints,
        })
    }

    /// Validates a Node; unparsable addresses are dropped with a warning.
    fn convert_node(
        &mut self,
        node: corev1::Node,
        name: String,
        object: &str,
    ) -> Result<Node, ParseError> {
        let statuses = node
            .status
            .and_then(|status| status.addresses)
            .unwrap_or_default();
        let mut addresses = Vec::new();
        for wanted in ["InternalIP", "ExternalIP"] {
            for (i, address) in statuses
                .iter()
                .enumerate()
                .filter(|(_, a)| a.type_ == wanted)
            {
                match address.address.parse::<IpAddr>() {
                    Ok(ip) => addresses.push(ip),
                    Err(_) => self.warn(
                        format!("Node {name}"),
                        format!(
                            "status.addresses[{i}]: {wanted} {:?} is not a valid ip address; skipped",
                            address.address
                        ),
                    ),
                }
            }
        }
        let spec = node.spec.unwrap_or_default();
        let pod_cidrs = match spec.pod_cidrs.filter(|cidrs| !cidrs.is_empty()) {
            Some(cidrs) => cidrs
                .iter()
                .enumerate()
                .map(|(i, cidr)| cidr_field(object, &format!("spec.podCIDRs[{i}]"), cidr))
                .collect::<Result<_, _>>()?,
            None => match spec.pod_cidr.filter(|cidr| !cidr.is_empty()) {
                Some(cidr) => vec![cidr_field(object, "spec.podCIDR", &cidr)?],
                None => Vec::new(),
            },
        };
        let zone = node
            .metadata
            .labels
            .and_then(|mut labels| labels.remove("topology.kubernetes.io/zone"));
        let draining = node.metadata.deletion_timestamp.is_some()
            || spec
                .taints
                .iter()
                .flatten()
                .any(|t| t.key == "ToBeDeletedByClusterAutoscaler");
        Ok(Node {
            name,
            addresses,
            zone,
            pod_cidrs,
            draining,
        })
    }
}

/// Deserializes a raw object into its k8s-openapi type, reporting the path of a mismatch.
fn decode<T: DeserializeOwned>(value: Value, object: &str) -> Result<T, ParseError> {
    serde_path_to_error::deserialize(value).map_err(|error| ParseError::Decode {
        object: object.to_owned(),
        path: display_path(error.path()),
        message: error.into_inner().to_string(),
    })
}

/// A serde path for messages; the root (`.`) reads `(top level)`.
fn display_path(path: &serde_path_to_error::Path) -> String {
    let path = path.to_string();
    if path == "." {
        "(top level)".to_owned()
    } else {
        path
    }
}

/// Validates a Service.
fn convert_service(
    service: corev1::Service,
    name: ObjectName,
    object: &str,
) -> Result<Service, ParseError> {
    let spec = service.spec.unwrap_or_default();
    let service_type = match spec.type_.as_deref() {
        None | Some("ClusterIP") => ServiceType::ClusterIp,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => ServiceType::ExternalName,
        Some(other) => {
            return Err(unsupported(
                object,
                "spec.type",
                other,
                "ClusterIP, NodePort, LoadBalancer or ExternalName",
            ));
        }
    };

    let cluster_ips = match spec.cluster_ips.as_deref().filter(|ips| !ips.is_empty()) {
        Some(ips) => {
            let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
            cluster_ip_list(object, "spec.clusterIPs", &ips, true)?
        }
        None => match spec.cluster_ip.as_deref() {
            Some(ip) => cluster_ip_list(object, "spec.clusterIP", &[ip], false)?,
            None => Vec::new(),
        },
    };

    check_cluster_ips(
        object,
        spec.cluster_ip.as_deref(),
        spec.cluster_ips.as_deref(),
        &cluster_ips,
    )?;

    let mut ports = Vec::new();
    for (i, port) in spec.ports.unwrap_or_default().into_iter().enumerate() {
        let node_port = match port.node_port {
            None | Some(0) => None,
            Some(n) => Some(port_number(
                object,
                &format!("spec.ports[{i}].nodePort"),
                n,
            )?),
        };
        ports.push(ServicePort {
            name: port.name.unwrap_or_default(),
            protocol: protocol(
                object,
                &format!("spec.ports[{i}].protocol"),
                port.protocol.as_deref(),
            )?,
            port: port_number(object, &format!("spec.ports[{i}].port"), port.port)?,
            node_port,
        });
    }

    let health_check_node_port = match spec.health_check_node_port {
        None | Some(0) => None,
        Some(n) => Some(port_number(object, "spec.healthCheckNodePort", n)?),
    };

    let external_ips = spec
        .external_ips
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            let field = format!("spec.externalIPs[{i}]");
            let addr = ip_field(object, &field, ip)?;
            match special_address(&addr) {
                // The API server refuses these (a loopback externalIP would send the node's own
                // local traffic to the service: CVE-2020-8554).
                Some(what) => Err(ParseError::Invalid {
                    object: object.to_owned(),
                    field,
                    message: format!("{ip:?} is {what}, which the API server rejects"),
                }),
                None => Ok(addr),
            }
        })
        .collect::<Result<_, _>>()?;

    let mut load_balancer_ips = Vec::new();
    let ingress = service
        .status
        .and_then(|s| s.load_balancer)
        .and_then(|lb| lb.ingress)
        .unwrap_or_default();
    for (i, entry) in ingress.iter().enumerate() {
        // Hostname-only entries have nothing to match on; `ipMode: Proxy` means the load balancer
        // rewrites the destination, so traffic never arrives addressed to the ingress IP.
        let Some(ip) = entry.ip.as_deref().filter(|ip| !ip.is_empty()) else {
            continue;
        };
        if entry.ip_mode.as_deref() == Some("Proxy") {
            continue;
        }
        load_balancer_ips.push(ip_field(
            object,
            &format!("status.loadBalancer.ingress[{i}].ip"),
            ip,
        )?);
    }

    let load_balancer_source_ranges = spec
        .load_balancer_source_ranges
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, range)| {
            let range = range.trim();
            parse_cidr_or_ip(range).ok_or_else(|| ParseError::InvalidCidr {
                object: object.to_owned(),
                field: format!("spec.loadBalancerSourceRanges[{i}]"),
                value: range.to_owned(),
            })
        })
        .collect::<Result<_, _>>()?;

    let session_affinity_timeout = match spec.session_affinity.as_deref() {
        None | Some("" | "None") => None,
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .and_then(|config| config.client_ip)
                .and_then(|client_ip| client_ip.timeout_seconds);
            match timeout {
                None => Some(DEFAULT_AFFINITY_TIMEOUT),
                Some(t) => Some(
                    u32::try_from(t)
                        .ok()
                        .filter(|t| (1..=MAX_AFFINITY_TIMEOUT).contains(&i64::from(*t)))
                        .ok_or_else(|| ParseError::OutOfRange {
                            object: object.to_owned(),
                            field: "spec.sessionAffinityConfig.clientIP.timeoutSeconds".to_owned(),
                            value: t.into(),
                            expected: "1..=86400",
                        })?,
                ),
            }
        }
        Some(other) => {
            return Err(unsupported(
                object,
                "spec.sessionAffinity",
                other,
                "ClientIP or None",
            ))
        }
    };

    let mut labels = service.metadata.labels.unwrap_or_default();
    Ok(Service {
        name,
        service_type,
        cluster_ips,
        ports,
        external_ips,
        load_balancer_ips,
        load_balancer_source_ranges,
        external_traffic_policy: traffic_policy(
            object,
            "spec.externalTrafficPolicy",
            spec.external_traffic_policy.as_deref(),
        )?,
        internal_traffic_policy: traffic_policy(
            object,
            "spec.internalTrafficPolicy",
            spec.internal_traffic_policy.as_deref(),
        )?,
        session_affinity_timeout,
        service_proxy_name: labels.remove("service.kubernetes.io/service-proxy-name"),
        traffic_distribution: spec.traffic_distribution,
        health_check_node_port,
    })
}

/// What the API server checks between `spec.clusterIP` and `spec.clusterIPs`: the first of the
/// list is `clusterIP`, at most two, of different families.
fn check_cluster_ips(
    object: &str,
    cluster_ip: Option<&str>,
    cluster_ips: Option<&[String]>,
    parsed: &[IpAddr],
) -> Result<(), ParseError> {
    let invalid = |field: &str, message: String| ParseError::Invalid {
        object: object.to_owned(),
        field: field.to_owned(),
        message,
    };
    if let (Some(one), Some([first, ..])) = (cluster_ip.filter(|ip| !ip.is_empty()), cluster_ips) {
        let same = match (one.parse::<IpAddr>(), first.parse::<IpAddr>()) {
            (Ok(a), Ok(b)) => a == b,
            _ => one == first,
        };
        if !same {
            return Err(invalid(
                "spec.clusterIPs[0]",
                format!("{first:?} must match spec.clusterIP {one:?}"),
            ));
        }
    }
    if parsed.len() > 2 {
        return Err(invalid(
            "spec.clusterIPs",
            format!(
                "{} addresses; at most two (one per family) are allowed",
                parsed.len()
            ),
        ));
    }
    if let [a, b] = parsed {
        if IpFamily::of(a) == IpFamily::of(b) {
            return Err(invalid(
                "spec.clusterIPs[1]",
                format!("{b} is of the same family as spec.clusterIPs[0] {a}; dual-stack needs one of each"),
            ));
        }
    }
    Ok(())
}

/// Why an address can never be a Service's external IP or a pod's endpoint, as the API server's
/// `ValidateNonSpecialIP` decides: unspecified, loopback, link-local unicast or multicast.
fn special_address(ip: &IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(v6) if v6.is_unspecified() => Some("the unspecified address"),
        IpAddr::V4(v4) if v4.is_loopback() => Some("a loopback address"),
        IpAddr::V6(v6) if v6.is_loopback() => Some("a loopback address"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("a link-local address"),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("a link-local address"),
        IpAddr::V4(v4) if v4.octets()[..3] == [224, 0, 0] => Some("a link-local multicast address"),
        IpAddr::V6(v6) if v6.segments()[0] == 0xff02 => Some("a link-local multicast address"),
        _ => None,
    }
}

/// Why an address can never be a pod's: the special ones, any multicast, the broadcast address.
fn unusable_endpoint(ip: &IpAddr) -> Option<&'static str> {
    special_address(ip).or(match ip {
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        IpAddr::V4(v4) if v4.is_multicast() => Some("a multicast address"),
        IpAddr::V6(v6) if v6.is_multicast() => Some("a multicast address"),
        _ => None,
    })
}

/// `spec.clusterIPs` / `spec.clusterIP`: `None` or empty (first entry) means headless.
fn cluster_ip_list(
    object: &str,
    field: &str,
    ips: &[&str],
    indexed: bool,
) -> Result<Vec<IpAddr>, ParseError> {
    if ips.first().is_some_and(|ip| ip.is_empty() || *ip == "None") {
        return Ok(Vec::new());
    }
    ips.iter()
        .enumerate()
        .map(|(i, ip)| {
            let field = if indexed {
                format!("{field}[{i}]")
            } else {
                field.to_owned()
            };
            ip_field(object, &field, ip)
        })
        .collect()
}

/// `externalTrafficPolicy` / `internalTrafficPolicy`; `Global` is the old name of `Cluster`.
fn traffic_policy(
    object: &str,
    field: &str,
    value: Option<&str>,
) -> Result<TrafficPolicy, ParseError> {
    match value {
        None | Some("" | "Cluster" | "Global") => Ok(TrafficPolicy::Cluster),
        Some("Local") => Ok(TrafficPolicy::Local),
        Some(other) => Err(unsupported(object, field, other, "Cluster or Local")),
    }
}

/// A port protocol; absent means TCP.
fn protocol(object: &str, field: &str, value: Option<&str>) -> Result<Protocol, ParseError> {
    match value {
        None | Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some("SCTP") => Ok(Protocol::Sctp),
        Some(other) => Err(unsupported(object, field, other, "TCP, UDP or SCTP")),
    }
}

/// A port number in `1..=65535`.
fn port_number(object: &str, field: &str, value: i32) -> Result<u16, ParseError> {
    // A missing required port decodes as 0.
    if value == 0 {
        return Err(ParseError::Required {
            object: object.to_owned(),
            field: field.to_owned(),
        });
    }
    u16::try_from(value)
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| ParseError::InvalidPort {
            object: object.to_owned(),
            field: field.to_owned(),
            value: value.into(),
        })
}

/// An IP address field.
fn ip_field(object: &str, field: &str, value: &str) -> Result<IpAddr, ParseError> {
    value.parse().map_err(|_| ParseError::InvalidIp {
        object: object.to_owned(),
        field: field.to_owned(),
        value: value.to_owned(),
    })
}

/// A CIDR field (host bits are cleared).
fn cidr_field(object: &str, field: &str, value: &str) -> Result<IpNet, ParseError> {
    parse_cidr(value).ok_or_else(|| ParseError::InvalidCidr {
        object: object.to_owned(),
        field: field.to_owned(),
        value: value.to_owned(),
    })
}

fn unsupported(object: &str, field: &str, value: &str, expected: &'static str) -> ParseError {
    ParseError::UnsupportedValue {
        object: object.to_owned(),
        field: field.to_owned(),
        value: value.to_owned(),
        expected,
    }
}

/// Parses `addr/len`, clearing host bits (`10.0.0.1/8` becomes `10.0.0.0/8`).
fn parse_cidr(value: &str) -> Option<IpNet> {
    value.parse::<IpNet>().ok().map(|net| net.trunc())
}

/// Like [`parse_cidr`], but a bare address is accepted as a `/32` or `/128`.
fn parse_cidr_or_ip(value: &str) -> Option<IpNet> {
    parse_cidr(value).or_else(|| value.parse::<IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn err(input: &str) -> String {
        parse_snapshot(input).unwrap_err().to_string()
    }

    fn svc(spec: &str) -> String {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{ name: web, namespace: default }}\nspec:\n{spec}")
    }

    fn slice(body: &str) -> String {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{ name: web-1, namespace: default, labels: {{ kubernetes.io/service-name: web }} }}\n{body}"
        )
    }

    const KUBECTL_LIST: &str = r#"
apiVersion: v1
items:
- apiVersion: v1
  kind: Service
  metadata:
    annotations:
      kubectl.kubernetes.io/last-applied-configuration: |
        {"apiVersion":"v1","kind":"Service","metadata":{"annotations":{},"name":"web","namespace":"shop"}}
    creationTimestamp: "2024-05-01T10:00:00Z"
    labels:
      app: web
    managedFields:
    - apiVersion: v1
      fieldsType: FieldsV1
      fieldsV1:
        f:spec:
          f:ports:
            .: {}
            k:{"port":80,"protocol":"TCP"}:
              .: {}
              f:name: {}
      manager: kubectl-client-side-apply
      operation: Update
      time: "2024-05-01T10:00:00Z"
    name: web
    namespace: shop
    resourceVersion: "12345"
    uid: 0b6f5a2e-8a8e-4c1e-9f3e-2d3c4b5a6f70
  spec:
    clusterIP: 172.30.0.10
    clusterIPs:
    - 172.30.0.10
    - fd00:30::10
    externalTrafficPolicy: Local
    internalTrafficPolicy: Cluster
    ipFamilies:
    - IPv4
    - IPv6
    ipFamilyPolicy: PreferDualStack
    loadBalancerSourceRanges:
    - 192.0.2.0/24
    - " 198.51.100.7 "
    - 2001:db8::/32
    ports:
    - name: http
      nodePort: 30080
      port: 80
      protocol: TCP
      targetPort: http
    - name: dns
      nodePort: 30053
      port: 53
      protocol: UDP
      targetPort: 5353
    selector:
      app: web
    sessionAffinity: ClientIP
    sessionAffinityConfig:
      clientIP:
        timeoutSeconds: 600
    trafficDistribution: PreferClose
    type: LoadBalancer
  status:
    loadBalancer:
      ingress:
      - ip: 203.0.113.10
        ipMode: VIP
      - ip: 203.0.113.11
        ipMode: Proxy
      - hostname: lb.example.com
      - ip: 2001:db8::10
- apiVersion: v1
  kind: Service
  metadata:
    name: kubernetes
    namespace: default
    resourceVersion: "200"
  spec:
    clusterIP: 172.30.0.1
    ports:
    - name: https
      port: 443
      targetPort: 6443
    sessionAffinity: None
    type: ClusterIP
  status:
    loadBalancer: {}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  addressType: IPv4
  endpoints:
  - addresses:
    - 10.0.1.5
    conditions:
      ready: true
      serving: true
      terminating: false
    hints:
      forZones:
      - name: zone-a
      forNodes:
      - name: node-a
    nodeName: node-a
    targetRef:
      kind: Pod
      name: web-5d8f7-abcde
      namespace: shop
      uid: 11111111-2222-3333-4444-555555555555
    zone: zone-a
  - addresses:
    - 10.0.2.7
    conditions:
      ready: false
      terminating: true
    nodeName: node-b
    zone: zone-b
  metadata:
    generateName: web-
    generation: 3
    labels:
      endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
      kubernetes.io/service-name: web
    managedFields:
    - apiVersion: discovery.k8s.io/v1
      manager: kube-controller-manager
      operation: Update
    name: web-x7k2p
    namespace: shop
    ownerReferences:
    - apiVersion: v1
      blockOwnerDeletion: true
      controller: true
      kind: Service
      name: web
      uid: 0b6f5a2e-8a8e-4c1e-9f3e-2d3c4b5a6f70
    resourceVersion: "12400"
  ports:
  - name: http
    port: 8080
    protocol: TCP
  - name: dns
    port: 5353
    protocol: UDP
  - name: unresolved
- apiVersion: v1
  kind: Node
  metadata:
    labels:
      kubernetes.io/hostname: node-a
      topology.kubernetes.io/zone: zone-a
    name: node-a
    resourceVersion: "999"
  spec:
    podCIDR: 10.0.1.0/24
    podCIDRs:
    - 10.0.1.0/24
    - fd00:10:0:1::/64
    taints: []
  status:
    addresses:
    - address: 2001:db8::a
      type: ExternalIP
    - address: node-a
      type: Hostname
    - address: 192.168.1.10
      type: InternalIP
    conditions:
    - type: Ready
      status: "True"
    nodeInfo:
      kubeletVersion: v1.33.1
kind: List
metadata:
  resourceVersion: ""
"#;

    #[test]
    fn kubectl_list() {
        let parsed = parse_snapshot(KUBECTL_LIST).unwrap();
        assert_eq!(parsed.warnings, vec![]);
        let snap = &parsed.snapshot;
        assert_eq!(snap.services.len(), 2);
        let web = &snap.services[&ObjectName::new("shop", "web")];
        assert_eq!(web.service_type, ServiceType::LoadBalancer);
        assert_eq!(web.cluster_ips, vec![ip("172.30.0.10"), ip("fd00:30::10")]);
        assert_eq!(
            web.ports,
            vec![
                ServicePort {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 80,
                    node_port: Some(30080)
                },
                ServicePort {
                    name: "dns".into(),
                    protocol: Protocol::Udp,
                    port: 53,
                    node_port: Some(30053)
                },
            ]
        );
        assert_eq!(
            web.load_balancer_ips,
            vec![ip("203.0.113.10"), ip("2001:db8::10")]
        );
        assert_eq!(
            web.load_balancer_source_ranges,
            vec![
                net("192.0.2.0/24"),
                net("198.51.100.7/32"),
                net("2001:db8::/32")
            ]
        );
        assert_eq!(web.external_traffic_policy, TrafficPolicy::Local);
        assert_eq!(web.internal_traffic_policy, TrafficPolicy::Cluster);
        assert_eq!(web.session_affinity_timeout, Some(600));
        assert_eq!(web.traffic_distribution.as_deref(), Some("PreferClose"));
        assert_eq!(web.service_proxy_name, None);

        let kubernetes = &snap.services[&ObjectName::new("default", "kubernetes")];
        assert_eq!(kubernetes.service_type, ServiceType::ClusterIp);
        assert_eq!(kubernetes.cluster_ips, vec![ip("172.30.0.1")]);
        assert_eq!(kubernetes.session_affinity_timeout, None);
        assert_eq!(kubernetes.ports[0].node_port, None);
        assert_eq!(kubernetes.ports[0].protocol, Protocol::Tcp);

        let slice = &snap.slices[&ObjectName::new("shop", "web-x7k2p")];
        assert_eq!(slice.service_name.as_deref(), Some("web"));
        assert_eq!(slice.address_type, AddressType::Ipv4);
        assert!(!slice.headless_label);
        // `unresolved` has no port and is dropped.
        assert_eq!(
            slice.ports,
            vec![
                SlicePort {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 8080
                },
                SlicePort {
                    name: "dns".into(),
                    protocol: Protocol::Udp,
                    port: 5353
                },
            ]
        );
        assert_eq!(
            slice.endpoints,
            vec![
                Endpoint {
                    address: ip("10.0.1.5"),
                    ready: true,
                    serving: true,
                    terminating: false,
                    node_name: Some("node-a".into()),
                    zone: Some("zone-a".into()),
                    hint_zones: vec!["zone-a".into()],
                    hint_nodes: vec!["node-a".into()],
                },
                Endpoint {
                    address: ip("10.0.2.7"),
                    ready: false,
                    serving: false,
                    terminating: true,
                    node_name: Some("node-b".into()),
                    zone: Some("zone-b".into()),
                    hint_zones: vec![],
                    hint_nodes: vec![],
                },
            ]
        );

        let node = &snap.nodes["node-a"];
        assert_eq!(node.addresses, vec![ip("192.168.1.10"), ip("2001:db8::a")]);
        assert_eq!(node.zone.as_deref(), Some("zone-a"));
        assert_eq!(
            node.pod_cidrs,
            vec![net("10.0.1.0/24"), net("fd00:10:0:1::/64")]
        );
    }

    #[test]
    fn multi_document_yaml_with_nested_list_and_empty_documents() {
        let input = format!(
            "---\n{}\n---\n---\napiVersion: v1\nkind: ServiceList\nitems:\n- apiVersion: v1\n  kind: Service\n  \
             metadata: {{ name: db }}\n  spec: {{ clusterIP: None, ports: [{{ port: 5432 }}] }}\n---\n{}\n",
            svc("  clusterIP: 172.30.0.10\n  ports: [{ port: 80 }]"),
            slice("addressType: IPv4\nendpoints: [{ addresses: [10.0.0.1] }]"),
        );
        let parsed = parse_snapshot(&input).unwrap();
        assert!(parsed.warnings.is_empty());
        assert_eq!(parsed.snapshot.services.len(), 2);
        // No namespace means `default`.
        let db = &parsed.snapshot.services[&ObjectName::new("default", "db")];
        assert!(db.is_headless());
        assert_eq!(parsed.snapshot.slices.len(), 1);
    }

    #[test]
    fn json_list_array_and_concatenated_objects() {
        let list = r#"{
  "apiVersion": "v1",
  "kind": "List",
  "items": [
    {"apiVersion": "v1", "kind": "Service",
     "metadata": {"name": "web", "namespace": "default", "labels": {"service.kubernetes.io/service-proxy-name": "other"}},
     "spec": {"clusterIPs": ["fd00::10"], "ports": [{"name": "h", "port": 80, "protocol": "SCTP"}]}},
    {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
     "metadata": {"name": "web-1", "namespace": "default",
                  "labels": {"kubernetes.io/service-name": "web", "service.kubernetes.io/headless": ""}},
     "addressType": "IPv6", "ports": [{"port": 80}], "endpoints": [{"addresses": ["fd00::1"]}]}
  ]
}"#;
        let parsed = parse_snapshot(list).unwrap();
        let web = &parsed.snapshot.services[&ObjectName::new("default", "web")];
        assert_eq!(web.cluster_ips, vec![ip("fd00::10")]);
        assert_eq!(web.ports[0].protocol, Protocol::Sctp);
        assert_eq!(web.service_proxy_name.as_deref(), Some("other"));
        let slice = &parsed.snapshot.slices[&ObjectName::new("default", "web-1")];
        assert!(slice.headless_label);
        assert_eq!(
            slice.ports,
            vec![SlicePort {
                name: String::new(),
                protocol: Protocol::Tcp,
                port: 80
            }]
        );

        let array = r#"[{"apiVersion":"v1","kind":"Node","metadata":{"name":"n1"}}]
{"apiVersion":"v1","kind":"Node","metadata":{"name":"n2"}}"#;
        let parsed = parse_snapshot(array).unwrap();
        assert_eq!(
            parsed.snapshot.nodes.keys().collect::<Vec<_>>(),
            ["n1", "n2"]
        );
    }

    #[test]
    fn invalid_json_reports_json_error() {
        let e = err("{\n  \"apiVersion\": \"v1\",\n  \"kind\": \"Service\",,\n}");
        assert!(e.starts_with("invalid json:"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        assert!(err("a: [").starts_with("invalid yaml:"));
    }

    #[test]
    fn unknown_kinds_are_skipped_with_warning() {
        let input = "apiVersion: v1\nkind: Pod\nmetadata: { name: foo, namespace: default }\n---\n\
                     apiVersion: v1\nkind: Namespace\nmetadata: { name: shop }\n---\n\
                     apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: { name: old, namespace: x }\n";
        let parsed = parse_snapshot(input).unwrap();
        let objects: Vec<_> = parsed.warnings.iter().map(|w| w.object.as_str()).collect();
        assert_eq!(
            objects,
            ["Pod default/foo", "Namespace shop", "EndpointSlice x/old"]
        );
        assert!(
            parsed.warnings[0].message.contains("v1 Pod"),
            "{}",
            parsed.warnings[0]
        );
        assert_eq!(parsed.snapshot, Snapshot::default());
    }

    #[test]
    fn duplicates_last_wins_with_warning() {
        let input = format!(
            "{}\n---\n{}",
            svc("  clusterIP: 172.30.0.10\n  ports: [{ port: 80 }]"),
            svc("  clusterIP: 172.30.0.11\n  ports: [{ port: 80 }]")
        );
        let parsed = parse_snapshot(&input).unwrap();
        assert_eq!(
            parsed.snapshot.services[&ObjectName::new("default", "web")].cluster_ips,
            vec![ip("172.30.0.11")]
        );
        assert_eq!(parsed.warnings.len(), 1);
        assert_eq!(parsed.warnings[0].object, "Service default/web");
    }

    #[test]
    fn service_validation_errors_name_object_and_field() {
        let cases = [
            ("  ports: [{ port: 80 }, { port: 70000 }]", "service default/web: spec.ports[1].port: 70000 is not a valid port"),
            ("  ports: [{ port: 0 }]", "service default/web: spec.ports[0].port: required value is missing"),
            ("  ports: [{ port: 80, nodePort: 65536 }]", "service default/web: spec.ports[0].nodePort: 65536 is not a valid port"),
            ("  ports: [{ port: 80, protocol: ICMP }]", "service default/web: spec.ports[0].protocol: unsupported value \"ICMP\""),
            ("  type: Magic", "service default/web: spec.type: unsupported value \"Magic\""),
            ("  clusterIP: 1.2.3", "service default/web: spec.clusterIP: \"1.2.3\" is not a valid ip address"),
            ("  clusterIPs: [10.0.0.1, nope]", "service default/web: spec.clusterIPs[1]: \"nope\" is not a valid ip address"),
            ("  externalIPs: [1.2.3.4, 300.1.1.1]", "service default/web: spec.externalIPs[1]: \"300.1.1.1\" is not a valid ip address"),
            ("  loadBalancerSourceRanges: [10.0.0.0/33]", "service default/web: spec.loadBalancerSourceRanges[0]: \"10.0.0.0/33\" is not a valid cidr"),
            ("  externalTrafficPolicy: Nearby", "service default/web: spec.externalTrafficPolicy: unsupported value \"Nearby\""),
            ("  internalTrafficPolicy: Far", "service default/web: spec.internalTrafficPolicy: unsupported value \"Far\""),
            ("  sessionAffinity: Cookie", "service default/web: spec.sessionAffinity: unsupported value \"Cookie\""),
            (
                "  sessionAffinity: ClientIP\n  sessionAffinityConfig: { clientIP: { timeoutSeconds: 0 } }",
                "service default/web: spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 is out of range",
            ),
            ("  ports: [{ port: eighty }]", "service default/web: spec.ports[0].port: invalid type: string \"eighty\""),
            ("  ports: [{ name: http }]", "service default/web: spec.ports[0].port: required value is missing"),
            ("  clusterIP: 10.0.0.1\n  clusterIPs: [10.0.0.2]", "service default/web: spec.clusterIPs[0]: \"10.0.0.2\" must match spec.clusterIP \"10.0.0.1\""),
            ("  clusterIPs: [10.0.0.1, 10.0.0.2]", "service default/web: spec.clusterIPs[1]: 10.0.0.2 is of the same family as spec.clusterIPs[0] 10.0.0.1"),
            ("  clusterIPs: [10.0.0.1, 'fd00::1', 10.0.0.3]", "service default/web: spec.clusterIPs: 3 addresses; at most two"),
            ("  externalIPs: [1.2.3.4, 127.0.0.1]", "service default/web: spec.externalIPs[1]: \"127.0.0.1\" is a loopback address, which the API server rejects"),
            ("  externalIPs: ['::1']", "service default/web: spec.externalIPs[0]: \"::1\" is a loopback address"),
            ("  externalIPs: [0.0.0.0]", "service default/web: spec.externalIPs[0]: \"0.0.0.0\" is the unspecified address"),
            ("  externalIPs: [169.254.169.254]", "service default/web: spec.externalIPs[0]: \"169.254.169.254\" is a link-local address"),
            ("  externalIPs: ['fe80::1']", "service default/web: spec.externalIPs[0]: \"fe80::1\" is a link-local address"),
            ("  externalIPs: [224.0.0.251]", "service default/web: spec.externalIPs[0]: \"224.0.0.251\" is a link-local multicast address"),
        ];
        // Consistent forms are accepted.
        for ok in [
            "  clusterIP: 10.0.0.1\n  clusterIPs: [10.0.0.1, 'fd00::1']\n  ports: [{ port: 80 }]",
            "  clusterIP: None\n  clusterIPs: [None]\n  ports: [{ port: 80 }]",
        ] {
            parse_snapshot(&svc(ok)).unwrap();
        }
        for (spec, expected) in cases {
            let e = err(&svc(spec));
            assert!(
                e.starts_with(expected),
                "{spec:?}\n  got: {e}\n want: {expected}"
            );
        }
        let lb = svc("  type: LoadBalancer\nstatus: { loadBalancer: { ingress: [{ ip: 1.2.3.4 }, { ip: bad }] } }");
        assert_eq!(err(&lb), "service default/web: status.loadBalancer.ingress[1].ip: \"bad\" is not a valid ip address");
    }

    #[test]
    fn unusable_endpoints_and_unlabelled_slices_are_warned_about() {
        let input = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                     metadata: { name: s1, namespace: default, labels: { kubernetes.io/service-name: web } }\n\
                     addressType: IPv4\nendpoints:\n\
                     - addresses: [0.0.0.0]\n- addresses: [127.0.0.1]\n- addresses: [224.1.2.3]\n\
                     - addresses: [255.255.255.255]\n- addresses: [169.254.0.9]\n- addresses: [10.0.0.1]\n\
                     ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                     metadata: { name: s2, namespace: default }\naddressType: IPv6\n\
                     endpoints: [{ addresses: ['ff02::1'] }, { addresses: ['fd00::1'] }]\n";
        let parsed = parse_snapshot(input).unwrap();
        let s1 = &parsed.snapshot.slices[&ObjectName::new("default", "s1")];
        assert_eq!(s1.endpoints.len(), 1);
        assert_eq!(s1.endpoints[0].address, ip("10.0.0.1"));
        let messages: Vec<String> = parsed.warnings.iter().map(|w| w.to_string()).collect();
        for wanted in [
            "EndpointSlice default/s1: endpoints[0]: address \"0.0.0.0\" is the unspecified address",
            "EndpointSlice default/s1: endpoints[1]: address \"127.0.0.1\" is a loopback address",
            "EndpointSlice default/s1: endpoints[2]: address \"224.1.2.3\" is a multicast address",
            "EndpointSlice default/s1: endpoints[3]: address \"255.255.255.255\" is the broadcast address",
            "EndpointSlice default/s1: endpoints[4]: address \"169.254.0.9\" is a link-local address",
            "EndpointSlice default/s2: endpoints[0]: address \"ff02::1\" is a link-local multicast address",
            "EndpointSlice default/s2: no kubernetes.io/service-name label",
        ] {
            assert!(
                messages.iter().any(|m| m.starts_with(wanted)),
                "{wanted} not in {messages:#?}"
            );
        }
        assert_eq!(messages.len(), 7, "{messages:#?}");
    }

    #[test]
    fn many_objects_of_an_unused_kind_make_one_warning() {
        let mut input = String::new();
        for i in 0..1000 {
            input.push_str(&format!(
                "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: c{i}, namespace: default }}\n"
            ));
        }
        let parsed = parse_snapshot(&input).unwrap();
        assert_eq!(parsed.warnings.len(), 1);
        assert_eq!(
            parsed.warnings[0].to_string(),
            "ConfigMap default/c0: v1 ConfigMap is not used by the proxy; 1000 objects of this kind skipped"
        );
    }

    #[test]
    fn duplicate_keys_and_merge_keys_are_decided_as_kubectl_does() {
        let e = err("apiVersion: v1\nkind: Service\nmetadata: { name: web }\n\
                     spec:\n  clusterIP: 10.0.0.1\n  clusterIP: 10.0.0.2\n");
        assert!(
            e.starts_with("invalid yaml: spec: duplicate key \"clusterIP\""),
            "{e}"
        );
        assert!(e.contains("at line 5"), "{e}");
        assert_eq!(e.matches("duplicate key").count(), 1, "said once: {e}");
        let parsed = parse_snapshot(
            "apiVersion: v1\nkind: Service\nmetadata: { name: web }\nspec:\n  clusterIP: 10.0.0.1\n  ports:\n\
             \x20 - &p { name: a, port: 80, protocol: UDP }\n  - { <<: *p, name: b, port: 81 }\n",
        )
        .unwrap();
        let ports = &parsed.snapshot.services[&ObjectName::new("default", "web")].ports;
        assert_eq!(ports[1].protocol, Protocol::Udp);
        assert_eq!(ports[1].port, 81);
        assert_eq!(ports[1].name, "b");
    }

    #[test]
    fn missing_name_and_non_objects() {
        assert_eq!(
            err("apiVersion: v1\nkind: Service\nmetadata: { namespace: default }\n"),
            "service (object #1): metadata.name is missing"
        );
        assert_eq!(
            err("apiVersion: v1\nkind: Pod\nmetadata: {}\n---\n- 42\n"),
            "object #2: not a kubernetes object (expected a mapping with apiVersion and kind)"
        );
        assert_eq!(
            err("kind: Node\nmetadata: { name: x }\n"),
            "object #1 (name \"x\"): apiVersion is missing"
        );
        assert_eq!(
            err("apiVersion: v1\n"),
            "object #1 (name \"\"): kind is missing"
        );
    }

    #[test]
    fn service_defaults_headless_and_external_name() {
        let parsed = parse_snapshot(&svc(
            "  clusterIP: None\n  clusterIPs: [None]\n  ports: [{ port: 80 }]",
        ))
        .unwrap();
        let web = &parsed.snapshot.services[&ObjectName::new("default", "web")];
        assert!(web.is_headless());
        assert_eq!(web.service_type, ServiceType::ClusterIp);
        assert_eq!(web.external_traffic_policy, TrafficPolicy::Cluster);
        assert_eq!(web.internal_traffic_policy, TrafficPolicy::Cluster);

        let input = svc("  type: ExternalName\n  externalName: example.com\n  externalTrafficPolicy: Global\n  \
                         sessionAffinity: ClientIP");
        let parsed = parse_snapshot(&input).unwrap();
        let web = &parsed.snapshot.services[&ObjectName::new("default", "web")];
        assert_eq!(web.service_type, ServiceType::ExternalName);
        assert!(web.cluster_ips.is_empty());
        assert_eq!(web.external_traffic_policy, TrafficPolicy::Cluster);
        assert_eq!(web.session_affinity_timeout, Some(10_800));
    }

    #[test]
    fn bad_endpoints_are_skipped_with_warning_and_siblings_kept() {
        let input = slice(
            "addressType: IPv4\nports: [{ name: http, port: 8080 }]\nendpoints:\n\
             - addresses: [10.0.0.1]\n- addresses: [not-an-ip]\n- addresses: [fd00::5]\n- addresses: []\n\
             - addresses: [10.0.0.2]\n  conditions: { ready: false, serving: true }\n",
        );
        let parsed = parse_snapshot(&input).unwrap();
        let slice = &parsed.snapshot.slices[&ObjectName::new("default", "web-1")];
        let addresses: Vec<_> = slice.endpoints.iter().map(|e| e.address).collect();
        assert_eq!(addresses, vec![ip("10.0.0.1"), ip("10.0.0.2")]);
        assert_eq!(slice.ports[0].name, "http");
        // Conditions: all unset means ready and serving, not terminating.
        let first = &slice.endpoints[0];
        assert!(first.ready && first.serving && !first.terminating);
        let second = &slice.endpoints[1];
        assert!(!second.ready && second.serving && !second.terminating);

        assert_eq!(parsed.warnings.len(), 3);
        assert!(parsed
            .warnings
            .iter()
            .all(|w| w.object == "EndpointSlice default/web-1"));
        assert!(
            parsed.warnings[0]
                .message
                .contains("endpoints[1]: address \"not-an-ip\""),
            "{}",
            parsed.warnings[0]
        );
        assert!(
            parsed.warnings[1]
                .message
                .contains("\"fd00::5\" is not IPv4"),
            "{}",
            parsed.warnings[1]
        );
        assert!(
            parsed.warnings[2]
                .message
                .contains("endpoints[3]: no addresses"),
            "{}",
            parsed.warnings[2]
        );
    }

    #[test]
    fn ipv6_and_fqdn_slices() {
        let v6 = slice(
            "addressType: IPv6\nendpoints: [{ addresses: [fd00::1] }, { addresses: [10.0.0.1] }]",
        );
        let parsed = parse_snapshot(&v6).unwrap();
        let s = &parsed.snapshot.slices[&ObjectName::new("default", "web-1")];
        assert_eq!(s.endpoints.len(), 1);
        assert_eq!(parsed.warnings.len(), 1);
        assert!(parsed.warnings[0].message.contains("is not IPv6"));

        let fqdn = slice("addressType: FQDN\nendpoints: [{ addresses: [db.example.com] }]");
        let parsed = parse_snapshot(&fqdn).unwrap();
        let s = &parsed.snapshot.slices[&ObjectName::new("default", "web-1")];
        assert_eq!(s.address_type, AddressType::Fqdn);
        assert!(s.endpoints.is_empty());
        assert!(parsed.warnings.is_empty());
    }

    #[test]
    fn slice_validation_errors() {
        assert_eq!(
            err(&slice("addressType: Bogus")),
            "endpointslice default/web-1: addressType: unsupported value \"Bogus\" (expected IPv4, IPv6 or FQDN)"
        );
        assert_eq!(
            err(&slice(
                "addressType: IPv4\nports: [{ port: 80 }, { port: 99999 }]"
            )),
            "endpointslice default/web-1: ports[1].port: 99999 is not a valid port"
        );
        assert!(err(&slice(
            "addressType: IPv4\nports: [{ port: 80, protocol: tcp }]"
        ))
        .starts_with("endpointslice default/web-1: ports[0].protocol: unsupported value \"tcp\""));
        assert!(err(&slice("addressType: IPv4\nendpoints: [{ addresses: [10.0.0.1], conditions: { ready: maybe } }]"))
            .starts_with("endpointslice default/web-1: endpoints[0].conditions.ready: invalid type"));
    }

    #[test]
    fn node_addresses_and_cidrs() {
        let node = "apiVersion: v1\nkind: Node\nmetadata: { name: n1 }\nspec: { podCIDR: 10.0.1.0/24 }\n\
                    status:\n  addresses:\n  - { type: ExternalIP, address: 203.0.113.1 }\n  \
                    - { type: InternalIP, address: bogus }\n  - { type: InternalIP, address: 192.168.0.1 }\n";
        let parsed = parse_snapshot(node).unwrap();
        let n = &parsed.snapshot.nodes["n1"];
        assert_eq!(n.addresses, vec![ip("192.168.0.1"), ip("203.0.113.1")]);
        assert_eq!(n.pod_cidrs, vec![net("10.0.1.0/24")]);
        assert_eq!(n.zone, None);
        assert_eq!(parsed.warnings.len(), 1);
        assert_eq!(parsed.warnings[0].object, "Node n1");
        assert!(
            parsed.warnings[0].message.contains("status.addresses[1]"),
            "{}",
            parsed.warnings[0]
        );

        assert_eq!(
            err("apiVersion: v1\nkind: Node\nmetadata: { name: n1 }\nspec: { podCIDRs: [10.0.1.0/24, 10.0.2.0] }\n"),
            "node n1: spec.podCIDRs[1]: \"10.0.2.0\" is not a valid cidr"
        );
        assert_eq!(
            err("apiVersion: v1\nkind: Node\nmetadata: { name: n1 }\nspec: { podCIDR: x }\n"),
            "node n1: spec.podCIDR: \"x\" is not a valid cidr"
        );
    }
}
