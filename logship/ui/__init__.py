"""Terminal rendering with rich: status tables, the dashboard, progress."""
