{{/* The chart's name, or nameOverride. */}}
{{- define "emberscope.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* fullnameOverride, else the release name prefixed with the chart's name unless it holds it. */}}
{{- define "emberscope.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "emberscope.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The ConfigMap holding the configuration: the chart's, or configMap.name. */}}
{{- define "emberscope.configMapName" -}}
{{- if .Values.configMap.create -}}
{{- include "emberscope.fullname" . -}}
{{- else if .Values.configMap.name -}}
{{- .Values.configMap.name -}}
{{- else -}}
{{- fail "configMap.create=false needs configMap.name, the existing ConfigMap to use" -}}
{{- end -}}
{{- end -}}

{{/* The environment variables of pyroscope.auth's Secret keys, by the key's value name. */}}
{{- define "emberscope.authEnv" -}}
{{- $auth := .Values.pyroscope.auth -}}
{{- $keys := dict "PYROSCOPE_USERNAME" $auth.usernameKey "PYROSCOPE_PASSWORD" $auth.passwordKey "PYROSCOPE_BEARER_TOKEN" $auth.bearerTokenKey "PYROSCOPE_TENANT_ID" $auth.tenantIdKey -}}
{{- if and (not $auth.secretName) (or $auth.usernameKey $auth.passwordKey $auth.bearerTokenKey $auth.tenantIdKey) -}}
{{- fail "pyroscope.auth keys need pyroscope.auth.secretName, the Secret holding them" -}}
{{- end -}}
{{- if ne (empty $auth.usernameKey) (empty $auth.passwordKey) -}}
{{- fail "pyroscope.auth.usernameKey and passwordKey go together (basic auth)" -}}
{{- end -}}
{{- if and $auth.usernameKey $auth.bearerTokenKey -}}
{{- fail "pyroscope.auth: basic auth (usernameKey) and bearerTokenKey exclude each other" -}}
{{- end -}}
{{- range $name, $key := $keys }}
{{- if $key }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $auth.secretName }}
      key: {{ $key }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "emberscope.selectorLabels" -}}
app.kubernetes.io/name: {{ include "emberscope.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "emberscope.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "emberscope.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "emberscope.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "emberscope.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "emberscope.priorityClassName" -}}
{{- if .Values.priorityClass.create -}}
{{- default (include "emberscope.fullname" .) .Values.priorityClassName -}}
{{- else -}}
{{- .Values.priorityClassName -}}
{{- end -}}
{{- end -}}

{{/* Non-empty before Kubernetes 1.30, where the AppArmor profile is an annotation, not a field. */}}
{{- define "emberscope.appArmorAnnotation" -}}
{{- if semverCompare "<1.30.0-0" .Capabilities.KubeVersion.Version -}}true{{- end -}}
{{- end -}}
