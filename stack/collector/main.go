// Command otelcol-proveai is Prove AI's minimal OpenTelemetry Collector: only the
// components that the stack's config.yaml uses, listed in components.go.
package main

import (
	"log"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/provider/envprovider"
	"go.opentelemetry.io/collector/confmap/provider/fileprovider"
	"go.opentelemetry.io/collector/confmap/provider/yamlprovider"
	"go.opentelemetry.io/collector/featuregate"
	"go.opentelemetry.io/collector/otelcol"
)

// version names the collector release this distribution is built from.
const version = "0.165.0-proveai"

// defaultGates are feature gates this distribution turns on; --feature-gates on the
// command line still overrides them.
var defaultGates = []string{
	// Span metrics without the spans' resource attributes: otherwise the Prometheus
	// exporter turns a service's service.instance.id into an `instance` label that
	// changes with every restart of the service, and adds a target_info series.
	"connector.spanmetrics.excludeResourceMetrics",
}

func main() {
	for _, gate := range defaultGates {
		if err := featuregate.GlobalRegistry().Set(gate, true); err != nil {
			log.Fatal(err)
		}
	}

	settings := otelcol.CollectorSettings{
		BuildInfo: component.BuildInfo{
			Command:     "otelcol-proveai",
			Description: "Prove AI's minimal OpenTelemetry Collector distribution",
			Version:     version,
		},
		Factories: components,
		ConfigProviderSettings: otelcol.ConfigProviderSettings{
			ResolverSettings: confmap.ResolverSettings{
				ProviderFactories: []confmap.ProviderFactory{
					envprovider.NewFactory(),
					fileprovider.NewFactory(),
					yamlprovider.NewFactory(),
				},
				// A bare ${VAR} reads the environment, as the configuration spec says.
				DefaultScheme: "env",
			},
		},
	}

	if err := otelcol.NewCommand(settings).Execute(); err != nil {
		log.Fatal(err)
	}
}
