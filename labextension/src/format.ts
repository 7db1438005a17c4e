/**
 * The sidebar's one set of formatting helpers, matching the Python side
 * (`julius_magics.recording.format_size`: decimal units, as Dask).
 */

const SIZE_UNITS = ['B', 'KB', 'MB', 'GB', 'TB'];

/** `41.2 MB`: decimal units, one decimal, as `recording.format_size`. */
export function formatSize(bytes: number | null | undefined): string {
  let value = Number(bytes ?? 0);
  for (const unit of SIZE_UNITS) {
    if (value < 1000 || unit === 'TB') {
      return unit === 'B' ? `${Math.round(value)} B` : `${value.toFixed(1)} ${unit}`;
    }
    value /= 1000;
  }
  return `${value} TB`; // not reached
}

/** `2026-12-01 23:40` from an ISO time (UTC as stored), or '' for none. */
export function formatCreated(iso: string | null | undefined): string {
  if (!iso) {
    return '';
  }
  return iso.replace('T', ' ').replace(/Z$/, '').slice(0, 16);
}

/** `3 steps`, `1 step`. */
export function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? '' : 's'}`;
}

/**
 * A recorded value for people: `0.88729` for Python's `float 0.88729`
 * (the type of a number says nothing to a reader), as `julius diff` shows it.
 */
export function formatValue(description: string | null | undefined): string {
  if (description === null || description === undefined) {
    return 'absent';
  }
  const space = description.indexOf(' ');
  const kind = space > 0 ? description.slice(0, space) : '';
  return (kind === 'float' || kind === 'int') && space < description.length - 1
    ? description.slice(space + 1)
    : description;
}

/** The first 12 characters of a hash, as the CLI shows fingerprints. */
export function shortHash(hash: string | null | undefined): string {
  return hash ? hash.slice(0, 12) : '—';
}

/** Seconds as `1.2 s`. */
export function formatSeconds(seconds: number | null | undefined): string {
  return seconds === null || seconds === undefined ? '' : `${seconds.toFixed(1)} s`;
}
