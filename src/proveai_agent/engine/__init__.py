"""The remediation engine: from an open case to ranked root causes and suggested fixes."""
