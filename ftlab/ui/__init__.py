"""The notebook UI, on top of everything it shows: the training playground (its logic and its panel),
the estimator's chart and slider panel, and the slider helpers."""

# The package's public names: imported from here by notebooks, tests and other packages.
from ftlab.ui.memory_viz import MemoryExplorer, plot_breakdown
from ftlab.ui.playground import Playground, Settings, SettingsError, check_settings
from ftlab.ui.playground_panel import PlaygroundPanel
