"""Models and loader for config/*.yaml: validate every file, report every problem at once."""

from monitor.config.channels import (
    CHANNEL_TYPES,
    Channel,
    ChannelsFile,
    ConsoleChannel,
    EmailChannel,
    SlackChannel,
)
from monitor.config.load import SCHEMAS, Config, load_config, schema_text, write_schemas
from monitor.config.models import (
    Duration,
    FeedConfig,
    FeedsFile,
    QuietHours,
    RegionDef,
    RegionNames,
    RegionsFile,
    SignalDef,
    SignalExamples,
    SignalsFile,
    Text,
    Watchlist,
    check_feed_url,
    compile_pattern,
    parse_duration,
)

__all__ = [
    "CHANNEL_TYPES", "SCHEMAS", "Channel", "ChannelsFile", "Config", "ConsoleChannel",
    "Duration", "EmailChannel", "FeedConfig", "FeedsFile", "QuietHours", "RegionDef",
    "RegionNames", "RegionsFile", "SignalDef", "SignalExamples", "SignalsFile", "SlackChannel",
    "Text", "Watchlist", "check_feed_url", "compile_pattern", "load_config", "parse_duration",
    "schema_text", "write_schemas",
]
