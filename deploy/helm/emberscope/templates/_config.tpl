{{/*
The default configuration: the Kubernetes example of Alloy's pyroscope.ebpf page, as in
deploy/k8s.alloy, pushing to .Values.pyroscope.url.
*/}}
{{- define "emberscope.defaultConfig" -}}
// Kubernetes example of the Alloy pyroscope.ebpf reference page (grafana.com/docs/alloy/latest/reference/components/pyroscope/pyroscope.ebpf/), reconstructed.

discovery.kubernetes "all_pods" {
  role = "pod"

  selectors {
    field = "spec.nodeName=" + sys.env("HOSTNAME")
    role  = "pod"
  }
}

discovery.relabel "local_pods" {
  targets = discovery.kubernetes.all_pods.targets

  // Pods that have finished run nothing worth profiling.
  rule {
    action        = "drop"
    regex         = "Succeeded|Failed"
    source_labels = ["__meta_kubernetes_pod_phase"]
  }

  // service_name = ebpf/<namespace>/<container>
  rule {
    action        = "replace"
    regex         = "(.*)@(.*)"
    replacement   = "ebpf/${1}/${2}"
    separator     = "@"
    source_labels = ["__meta_kubernetes_namespace", "__meta_kubernetes_pod_container_name"]
    target_label  = "service_name"
  }

  // Every pod label becomes a profile label.
  rule {
    action = "labelmap"
    regex  = "__meta_kubernetes_pod_label_(.+)"
  }

  // Plain copies of the metadata a profile is usually searched by.
  rule {
    action        = "replace"
    source_labels = ["__meta_kubernetes_namespace"]
    target_label  = "namespace"
  }

  rule {
    action        = "replace"
    source_labels = ["__meta_kubernetes_pod_name"]
    target_label  = "pod"
  }

  rule {
    action        = "replace"
    source_labels = ["__meta_kubernetes_node_name"]
    target_label  = "node"
  }

  rule {
    action        = "replace"
    source_labels = ["__meta_kubernetes_pod_container_name"]
    target_label  = "container"
  }
}

pyroscope.ebpf "local_pods" {
  forward_to = [pyroscope.write.endpoint.receiver]
  targets    = discovery.relabel.local_pods.output
}

pyroscope.write "endpoint" {
  // Profiles that cannot be delivered wait here (the chart's spool volume).
  spool_directory = "/var/lib/emberscope/spool"
  spool_max_bytes = {{ int64 .Values.spool.maxBytes }}

  endpoint {
    url = {{ .Values.pyroscope.url | quote }}
    {{- with .Values.pyroscope.auth }}
    {{- if .usernameKey }}
    basic_auth {
      username = sys.env("PYROSCOPE_USERNAME")
      password = sys.env("PYROSCOPE_PASSWORD")
    }
    {{- end }}
    {{- if .bearerTokenKey }}
    bearer_token = sys.env("PYROSCOPE_BEARER_TOKEN")
    {{- end }}
    {{- if .tenantIdKey }}
    headers = { "X-Scope-OrgID" = sys.env("PYROSCOPE_TENANT_ID") }
    {{- end }}
    {{- end }}
  }
}
{{- end -}}
