"""The ground: errors, settings, time, data-file readers, names. Imports nothing else of Whistle."""
