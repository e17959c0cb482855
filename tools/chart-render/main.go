// Command chart-render renders a Helm chart directory the way
//
//	helm template <release> <chart> --namespace <ns> [--set key=value ...]
//
// does, without helm: Go's text/template with sprig's function map (the engines Helm uses),
// plus the Helm functions the Emberscope chart calls (include, toYaml) and the few others a
// chart commonly needs (tpl, required, fromYaml, toJson is sprig's). Values are read like Helm
// reads them (YAML converted to JSON, so numbers are float64), --set values are typed like
// Helm's strvals (true/false/null/integers), documents are split, trimmed, sorted by Helm's
// install order and printed with "---" and "# Source:" comments.
//
// Not supported: subcharts, .Files, lookup, values.schema.json validation, --values files,
// list indexes in --set keys.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"gopkg.in/yaml.v2"
)

type setFlags []string

func (s *setFlags) String() string     { return strings.Join(*s, ",") }
func (s *setFlags) Set(v string) error { *s = append(*s, v); return nil }

// The kinds in the order Helm installs (and prints) them; unknown kinds come last, by kind.
var installOrder = []string{
	"PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
	"PodSecurityPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList",
	"ConfigMap", "StorageClass", "PersistentVolume", "PersistentVolumeClaim",
	"CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding",
	"ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service",
	"DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
	"HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress",
	"APIService", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
}

// The API versions .Capabilities.APIVersions.Has knows without a cluster (as helm template).
var defaultAPIVersions = []string{
	"v1", "apps/v1", "batch/v1", "policy/v1", "rbac.authorization.k8s.io/v1",
	"scheduling.k8s.io/v1", "networking.k8s.io/v1", "storage.k8s.io/v1",
	"apiextensions.k8s.io/v1", "admissionregistration.k8s.io/v1", "autoscaling/v2",
	"coordination.k8s.io/v1", "discovery.k8s.io/v1", "events.k8s.io/v1",
	"certificates.k8s.io/v1", "node.k8s.io/v1",
}

// APIVersions is .Capabilities.APIVersions.
type APIVersions []string

// Has reports whether an API version ("apps/v1") or resource ("apps/v1/DaemonSet") is known.
func (a APIVersions) Has(version string) bool {
	for _, known := range a {
		if known == version {
			return true
		}
	}
	return false
}

func main() {
	var sets, apiVersions setFlags
	namespace := flag.String("namespace", "default", "the release namespace")
	kubeVersion := flag.String("kube-version", "v1.30.0", "the Kubernetes version of .Capabilities")
	flag.Var(&sets, "set", "key=value overrides, dotted keys, comma separated (repeatable)")
	flag.Var(&apiVersions, "api-versions", "extra API versions for .Capabilities (repeatable)")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: chart-render [flags] <release> <chart dir>\n")
		flag.PrintDefaults()
	}
	args, flagArgs := splitArgs(os.Args[1:])
	if err := flag.CommandLine.Parse(flagArgs); err != nil {
		os.Exit(2)
	}
	if len(args) != 2 {
		flag.Usage()
		os.Exit(2)
	}
	out, err := render(args[0], args[1], *namespace, *kubeVersion, sets, apiVersions)
	if err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
	os.Stdout.WriteString(out)
}

// splitArgs lets flags follow the positional arguments, as helm allows.
func splitArgs(all []string) (positional, flags []string) {
	for i := 0; i < len(all); i++ {
		arg := all[i]
		if strings.HasPrefix(arg, "-") {
			flags = append(flags, arg)
			if !strings.Contains(arg, "=") && i+1 < len(all) {
				i++
				flags = append(flags, all[i])
			}
		} else {
			positional = append(positional, arg)
		}
	}
	return positional, flags
}

// readYAML reads YAML the way sigs.k8s.io/yaml (Helm's reader) does: through JSON, so maps
// have string keys and every number is a float64.
func readYAML(data []byte) (map[string]interface{}, error) {
	var raw interface{}
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return nil, err
	}
	encoded, err := json.Marshal(jsonable(raw))
	if err != nil {
		return nil, err
	}
	out := map[string]interface{}{}
	if err := json.Unmarshal(encoded, &out); err != nil {
		return nil, err
	}
	return out, nil
}

func jsonable(v interface{}) interface{} {
	switch v := v.(type) {
	case map[interface{}]interface{}:
		out := make(map[string]interface{}, len(v))
		for key, value := range v {
			out[fmt.Sprint(key)] = jsonable(value)
		}
		return out
	case []interface{}:
		out := make([]interface{}, len(v))
		for i, value := range v {
			out[i] = jsonable(value)
		}
		return out
	}
	return v
}

// toYaml is Helm's: sigs.k8s.io/yaml's Marshal (JSON, then yaml.v2), without the final newline.
func toYaml(v interface{}) string {
	encoded, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	var obj interface{}
	if err := yaml.Unmarshal(encoded, &obj); err != nil {
		return ""
	}
	data, err := yaml.Marshal(obj)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(data), "\n")
}

func fromYaml(s string) map[string]interface{} {
	out, err := readYAML([]byte(s))
	if err != nil {
		return map[string]interface{}{"Error": err.Error()}
	}
	return out
}

// parseSets applies --set overrides the way Helm's strvals.ParseInto types them.
func parseSets(values map[string]interface{}, sets []string) error {
	for _, set := range sets {
		for _, pair := range splitUnescaped(set, ',') {
			key, value, ok := strings.Cut(pair, "=")
			if !ok || key == "" {
				return fmt.Errorf("--set %q: expected key=value", pair)
			}
			parts := strings.Split(key, ".")
			node := values
			for _, part := range parts[:len(parts)-1] {
				child, ok := node[part].(map[string]interface{})
				if !ok {
					child = map[string]interface{}{}
					node[part] = child
				}
				node = child
			}
			last := parts[len(parts)-1]
			typed := typedValue(strings.ReplaceAll(value, `\,`, ","))
			if typed == nil {
				delete(node, last) // Helm: key=null removes the key.
			} else {
				node[last] = typed
			}
		}
	}
	return nil
}

func splitUnescaped(s string, sep byte) []string {
	var parts []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' {
			i++
			continue
		}
		if s[i] == sep {
			parts = append(parts, s[start:i])
			start = i + 1
		}
	}
	return append(parts, s[start:])
}

func typedValue(v string) interface{} {
	switch strings.ToLower(v) {
	case "true":
		return true
	case "false":
		return false
	case "null":
		return nil
	}
	if len(v) > 1 && v[0] == '0' { // Helm keeps leading zeros: a string.
		return v
	}
	if i, err := strconv.ParseInt(v, 10, 64); err == nil {
		return i
	}
	return v
}

// chartMetadata maps Chart.yaml's keys to Helm's field names (.Chart.Name, .Chart.AppVersion).
func chartMetadata(raw map[string]interface{}) map[string]interface{} {
	out := map[string]interface{}{}
	for key, value := range raw {
		out[strings.ToUpper(key[:1])+key[1:]] = value
	}
	out["IsRoot"] = true
	return out
}

type manifest struct {
	name    string
	content string
	kind    string
	order   int
}

func render(release, chartDir, namespace, kubeVersion string, sets, apiVersions []string) (string, error) {
	chartData, err := os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		return "", err
	}
	chartRaw, err := readYAML(chartData)
	if err != nil {
		return "", fmt.Errorf("Chart.yaml: %w", err)
	}
	chart := chartMetadata(chartRaw)
	chartName, _ := chart["Name"].(string)
	if chartName == "" {
		return "", errors.New("Chart.yaml has no name")
	}

	values := map[string]interface{}{}
	if data, err := os.ReadFile(filepath.Join(chartDir, "values.yaml")); err == nil {
		if values, err = readYAML(data); err != nil {
			return "", fmt.Errorf("values.yaml: %w", err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	if err := parseSets(values, sets); err != nil {
		return "", err
	}

	versions := APIVersions(append(append([]string{}, defaultAPIVersions...), apiVersions...))
	major, minor := "1", "30"
	if parts := strings.Split(strings.TrimPrefix(kubeVersion, "v"), "."); len(parts) >= 2 {
		major, minor = parts[0], parts[1]
	}
	top := map[string]interface{}{
		"Values": values,
		"Chart":  chart,
		"Release": map[string]interface{}{
			"Name": release, "Namespace": namespace, "Service": "Helm",
			"Revision": 1, "IsInstall": true, "IsUpgrade": false,
		},
		"Capabilities": map[string]interface{}{
			"APIVersions": versions,
			"KubeVersion": map[string]interface{}{
				"Version": kubeVersion, "Major": major, "Minor": minor,
				"GitVersion": kubeVersion,
			},
		},
	}

	// Every file under templates/, named as Helm names them: <chart>/templates/<file>.
	templatesDir := filepath.Join(chartDir, "templates")
	var names []string
	sources := map[string]string{}
	err = filepath.WalkDir(templatesDir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(templatesDir, p)
		if err != nil {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		name := path.Join(chartName, "templates", filepath.ToSlash(rel))
		names = append(names, name)
		sources[name] = string(data)
		return nil
	})
	if err != nil {
		return "", err
	}
	sort.Strings(names)

	root := template.New("gotpl")
	root.Option("missingkey=zero")
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env")
	delete(funcs, "expandenv")
	includedNames := map[string]int{}
	funcs["include"] = func(name string, data interface{}) (string, error) {
		if includedNames[name] > 1000 {
			return "", fmt.Errorf("rendering template has a nested reference name: %s", name)
		}
		includedNames[name]++
		defer func() { includedNames[name]-- }()
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, data); err != nil {
			return "", err
		}
		return buf.String(), nil
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		if _, err := t.New("tpl").Parse(text); err != nil {
			return "", err
		}
		var buf bytes.Buffer
		if err := t.ExecuteTemplate(&buf, "tpl", data); err != nil {
			return "", err
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
	funcs["toYaml"] = toYaml
	funcs["fromYaml"] = fromYaml
	funcs["required"] = func(message string, value interface{}) (interface{}, error) {
		if value == nil {
			return nil, errors.New(message)
		}
		if s, ok := value.(string); ok && s == "" {
			return nil, errors.New(message)
		}
		return value, nil
	}
	funcs["lookup"] = func(string, string, string, string) (map[string]interface{}, error) {
		return map[string]interface{}{}, nil // helm template: no cluster, nothing found
	}
	root.Funcs(funcs)
	for _, name := range names {
		if _, err := root.New(name).Parse(sources[name]); err != nil {
			return "", err
		}
	}

	order := map[string]int{}
	for i, kind := range installOrder {
		order[kind] = i
	}
	separator := regexp.MustCompile(`(?:^|\s*\n)---\s*`)
	var manifests []manifest
	for _, name := range names {
		base := path.Base(name)
		if strings.HasPrefix(base, "_") || strings.HasSuffix(name, "NOTES.txt") {
			continue
		}
		scope := map[string]interface{}{}
		for key, value := range top {
			scope[key] = value
		}
		scope["Template"] = map[string]interface{}{
			"Name": name, "BasePath": path.Join(chartName, "templates"),
		}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, scope); err != nil {
			return "", err
		}
		text := strings.ReplaceAll(buf.String(), "<no value>", "")
		if strings.TrimSpace(text) == "" {
			continue
		}
		if ext := path.Ext(name); ext != ".yaml" && ext != ".yml" {
			continue
		}
		for _, doc := range separator.Split(strings.TrimSpace(text), -1) {
			doc = strings.TrimSpace(doc)
			if doc == "" {
				continue
			}
			var head struct {
				Kind string `yaml:"kind"`
			}
			if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
				return "", fmt.Errorf("%s: rendered YAML does not parse: %w\n%s", name, err, doc)
			}
			position, known := order[head.Kind]
			if !known {
				position = len(installOrder)
			}
			manifests = append(manifests, manifest{name, doc, head.Kind, position})
		}
	}
	sort.SliceStable(manifests, func(i, j int) bool {
		a, b := manifests[i], manifests[j]
		if a.order != b.order {
			return a.order < b.order
		}
		if a.order == len(installOrder) && a.kind != b.kind {
			return a.kind < b.kind
		}
		return false
	})

	var out strings.Builder
	for _, m := range manifests {
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", m.name, m.content)
	}
	return out.String(), nil
}
