import { Widget } from '@lumino/widgets';
import { Message } from '@lumino/messaging';

import {
  ApiError,
  IRecordingDetails,
  IRecordingInfo,
  IReplayJob,
  requestAPI
} from './api';

/** Options of the panel that the plugin can change at run time. */
export interface IPanelOptions {
  /** Seconds between list reloads while visible; 0 = off. */
  pollInterval: number;
  /** Seconds between replay progress polls. */
  replayPollInterval: number;
  /** Called by the "Open in notebook" button. */
  openInNotebook: (name: string) => void;
}

/** Make an element; text is always set with `textContent` (never HTML). */
function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className = '',
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? '' : 's'}`;
}

function formatSize(bytes: number): string {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

/** The message of an error, for the user. */
export function describeError(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * The "Recordings" sidebar: the store's recordings, the selected one's
 * details, and a Replay action with progress and the verification result.
 */
export class RecordingsPanel extends Widget {
  constructor(options: IPanelOptions) {
    super();
    this.options = options;
    this.id = 'julius-recordings';
    this.title.caption = 'Recordings';
    this.addClass('jp-JuliusRecordings');

    const header = h('div', 'jp-JuliusRecordings-header');
    header.appendChild(h('span', 'jp-JuliusRecordings-title', 'Recordings'));
    this.refreshButton = h('button', 'jp-JuliusRecordings-refresh jp-mod-styled', 'Refresh');
    this.refreshButton.title = 'Reload the list of recordings';
    this.refreshButton.onclick = () => void this.refresh();
    header.appendChild(this.refreshButton);
    this.statusNode = h('div', 'jp-JuliusRecordings-status');
    this.errorNode = h('div', 'jp-JuliusRecordings-error');
    this.errorNode.hidden = true;
    this.listNode = h('ul', 'jp-JuliusRecordings-list');
    // one listener for the whole list: a store can hold thousands of recordings
    this.listNode.onclick = event => {
      const item = (event.target as HTMLElement).closest('.jp-JuliusRecordings-item') as HTMLElement | null;
      if (item?.dataset.name) {
        void this.select(item.dataset.name);
      }
    };
    this.detailsNode = h('div', 'jp-JuliusRecordings-details');
    this.node.append(header, this.statusNode, this.errorNode, this.listNode, this.detailsNode);
  }

  /** The recordings shown, newest first. */
  get recordings(): ReadonlyArray<IRecordingInfo> {
    return this._recordings;
  }

  /** The name of the selected recording, or null. */
  get selected(): string | null {
    return this._selected;
  }

  /** Apply new settings (poll intervals). */
  configure(options: Partial<IPanelOptions>): void {
    this.options = { ...this.options, ...options };
    this.startPolling();
  }

  /** Reload the list from `GET /julius/api/recordings`. */
  async refresh(): Promise<void> {
    const started = performance.now();
    this.statusNode.textContent = 'Loading…';
    try {
      const reply = await requestAPI<{ recordings: IRecordingInfo[] }>('recordings');
      this._recordings = reply.recordings;
      this.showError(null);
      this.renderList();
      const ms = Math.round(performance.now() - started);
      this.statusNode.textContent = `${plural(this._recordings.length, 'recording')} · loaded in ${ms} ms`;
      this.node.dataset.loadMs = String(ms);
      if (this._selected && !this._recordings.some(r => r.name === this._selected)) {
        this.select(null);
      }
    } catch (error) {
      this.statusNode.textContent = '';
      if (error instanceof ApiError && error.status === 404) {
        this.showError(
          'The julius_magics server extension is not available on this Jupyter server. ' +
            'Install julius_magics in the environment that runs JupyterLab and restart it ' +
            '(check with: jupyter server extension list).'
        );
      } else {
        this.showError(describeError(error));
      }
    }
  }

  /** Select a recording and show its details (null clears the selection). */
  async select(name: string | null): Promise<void> {
    this._selected = name;
    for (const item of Array.from(this.listNode.children) as HTMLElement[]) {
      item.classList.toggle('jp-mod-selected', item.dataset.name === name);
    }
    if (name === null) {
      this.detailsNode.replaceChildren();
      return;
    }
    const info = this._recordings.find(r => r.name === name);
    this.renderDetails(name, info ?? null, null);
    try {
      const reply = await requestAPI<IRecordingDetails>(`recordings/${encodeURIComponent(name)}`);
      if (this._selected === name) {
        this.renderDetails(name, reply.info, reply.details);
      }
    } catch (error) {
      if (this._selected === name) {
        this.detailsNode
          .querySelector('.jp-JuliusRecordings-detailsBody')
          ?.replaceChildren(h('div', 'jp-JuliusRecordings-error', describeError(error)));
      }
    }
  }

  /** Start a replay of `name` and show its progress until it ends. */
  async replay(name: string): Promise<IReplayJob | null> {
    if (this._selected !== name) {
      await this.select(name);
    }
    const box = this.replayBox(name);
    box.replaceChildren();
    const bar = h('progress', 'jp-JuliusRecordings-progress');
    const message = h('div', 'jp-JuliusRecordings-progressMessage', 'starting replay…');
    const result = h('div', 'jp-JuliusRecordings-result');
    box.append(bar, message, result);
    let job: IReplayJob;
    try {
      job = await requestAPI<IReplayJob>('replays', {
        method: 'POST',
        body: JSON.stringify({ name })
      });
      while (job.state === 'running') {
        this.showProgress(job, bar, message);
        await new Promise(resolve =>
          setTimeout(resolve, 1000 * this.options.replayPollInterval)
        );
        job = await requestAPI<IReplayJob>(`replays/${job.id}`);
      }
    } catch (error) {
      result.textContent = `Replay error: ${describeError(error)}`;
      result.dataset.state = 'error';
      return null;
    }
    this.showProgress(job, bar, message);
    this.showResult(job, result);
    // a verified replay changes the recording's status, in the list and the details
    void this.refresh();
    if (this._selected === name) {
      void this.select(name);
    }
    return job;
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    void this.refresh();
    this.startPolling();
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this.stopPolling();
  }

  dispose(): void {
    this.stopPolling();
    super.dispose();
  }

  private startPolling(): void {
    this.stopPolling();
    if (this.options.pollInterval > 0 && this.isVisible) {
      this.timer = window.setInterval(
        () => void this.refresh(),
        1000 * this.options.pollInterval
      );
    }
  }

  private stopPolling(): void {
    if (this.timer !== null) {
      window.clearInterval(this.timer);
      this.timer = null;
    }
  }

  private showError(message: string | null): void {
    this.errorNode.hidden = message === null;
    this.errorNode.textContent = message ?? '';
    this.listNode.hidden = message !== null;
  }

  private renderList(): void {
    const items = document.createDocumentFragment();
    for (const rec of this._recordings) {
      const item = h('li', 'jp-JuliusRecordings-item');
      item.dataset.name = rec.name;
      item.classList.toggle('jp-mod-selected', rec.name === this._selected);
      const top = h('div', 'jp-JuliusRecordings-itemTop');
      top.append(
        h('span', 'jp-JuliusRecordings-name', rec.name),
        h('span', `jp-JuliusRecordings-badge jp-mod-${rec.status}`, rec.status)
      );
      const meta = [
        plural(rec.steps, 'step'),
        rec.workers !== null ? plural(rec.workers, 'worker') : null,
        formatSize(rec.size),
        rec.created ? rec.created.replace('T', ' ').slice(0, 19) : null
      ].filter(Boolean);
      item.append(top, h('div', 'jp-JuliusRecordings-meta', meta.join(' · ')));
      if (rec.note) {
        item.append(h('div', 'jp-JuliusRecordings-note', rec.note));
      }
      items.appendChild(item);
    }
    if (this._recordings.length === 0) {
      items.appendChild(
        h('li', 'jp-JuliusRecordings-empty', 'No recordings yet: record one with %record start NAME.')
      );
    }
    this.listNode.replaceChildren(items);
  }

  private renderDetails(
    name: string,
    info: IRecordingInfo | null,
    details: { [key: string]: unknown } | null
  ): void {
    // keep a replay's progress when the same recording's details are re-rendered
    const previous = this.detailsNode.querySelector('.jp-JuliusRecordings-replay') as HTMLElement | null;
    const keepReplay = previous?.dataset.name === name ? previous : null;
    const root = h('div');
    root.appendChild(h('h3', 'jp-JuliusRecordings-detailsName', name));
    const actions = h('div', 'jp-JuliusRecordings-actions');
    const replay = h('button', 'jp-JuliusRecordings-replayButton jp-mod-styled jp-mod-accept', 'Replay');
    replay.onclick = () => void this.replay(name);
    const open = h('button', 'jp-JuliusRecordings-openButton jp-mod-styled', 'Open in notebook');
    open.title = `Insert a %replay ${name} cell into the active notebook`;
    open.onclick = () => this.options.openInNotebook(name);
    actions.append(replay, open);
    root.appendChild(actions);
    root.appendChild(keepReplay ?? h('div', 'jp-JuliusRecordings-replay'));
    const body = h('div', 'jp-JuliusRecordings-detailsBody');
    if (info) {
      body.appendChild(
        table([
          ['created', info.created ?? ''],
          ['steps', String(info.steps)],
          ['size', formatSize(info.size)],
          ['workers', info.workers === null ? '' : String(info.workers)],
          ['status', info.status],
          ['data', info.data_mode ?? ''],
          ['signed', info.signed_by_me === null ? '' : info.signed_by_me ? 'by me' : `by another key (${info.key_id ?? '?'})`],
          ['note', info.note ?? '']
        ])
      );
    }
    if (details) {
      for (const [key, value] of Object.entries(details)) {
        if (value === null || value === undefined || key === 'info') {
          continue; // the summary above already shows `info`
        }
        body.appendChild(section(key, value));
      }
    } else {
      body.appendChild(h('div', 'jp-JuliusRecordings-status', 'Loading details…'));
    }
    root.appendChild(body);
    this.detailsNode.replaceChildren(...Array.from(root.childNodes));
  }

  private replayBox(name: string): HTMLElement {
    let box = this.detailsNode.querySelector('.jp-JuliusRecordings-replay') as HTMLElement | null;
    if (!box) {
      box = h('div', 'jp-JuliusRecordings-replay');
      this.detailsNode.appendChild(box);
    }
    box.dataset.name = name;
    return box;
  }

  private showProgress(job: IReplayJob, bar: HTMLProgressElement, message: HTMLElement): void {
    if (job.total > 0) {
      bar.max = job.total;
      bar.value = job.done;
    }
    message.textContent =
      job.total > 0
        ? `${job.done}/${job.total} steps · ${job.message}`
        : job.message;
  }

  private showResult(job: IReplayJob, result: HTMLElement): void {
    result.dataset.state = job.state;
    result.replaceChildren();
    if (job.state === 'verified') {
      const steps = job.report?.steps ?? job.done;
      result.appendChild(h('strong', '', 'verified'));
      result.appendChild(h('span', '', ` — ${plural(steps, 'step')} replayed, every result fingerprint matched`));
    } else if (job.state === 'failed') {
      const mismatches = job.report?.mismatches ?? [];
      result.appendChild(h('strong', '', 'not verified'));
      result.appendChild(h('span', '', ` — ${mismatches.length} result(s) differ`));
      const list = h('ul');
      for (const m of mismatches) {
        const what = m.label || m.node_id || '?';
        list.appendChild(h('li', '', `${what}: ${m.cause ?? 'fingerprint differs'}`));
      }
      result.appendChild(list);
    } else {
      result.appendChild(h('strong', '', 'error'));
      result.appendChild(h('span', '', ` — ${job.message}`));
    }
  }

  private options: IPanelOptions;
  private timer: number | null = null;
  private _recordings: IRecordingInfo[] = [];
  private _selected: string | null = null;
  private refreshButton: HTMLButtonElement;
  private statusNode: HTMLElement;
  private errorNode: HTMLElement;
  private listNode: HTMLUListElement;
  private detailsNode: HTMLElement;
}

function table(rows: [string, string][]): HTMLTableElement {
  const node = h('table', 'jp-JuliusRecordings-table');
  for (const [key, value] of rows) {
    const row = h('tr');
    row.append(h('th', '', key), h('td', '', value));
    node.appendChild(row);
  }
  return node;
}

/** One line per item of a `describe()` list (steps, data files, results). */
function itemLine(key: string, item: any): string {
  if (key === 'steps') {
    return `${item.seq}. ${item.kind} — ${item.summary ?? ''}`;
  }
  if (key === 'data') {
    return `${item.path} (${formatSize(item.size ?? 0)}, ${item.embedded ? 'embedded' : 'hash only'})`;
  }
  if (key === 'results') {
    return `${item.label || item.node}: ${item.describe ?? ''}`;
  }
  return typeof item === 'string' ? item : JSON.stringify(item);
}

/** A collapsible section of the details; every value goes in as text. */
function section(key: string, value: unknown): HTMLElement {
  const node = h('details', 'jp-JuliusRecordings-section');
  node.dataset.key = key;
  if (Array.isArray(value)) {
    node.appendChild(h('summary', '', `${key} (${value.length})`));
    const list = h('ol', 'jp-JuliusRecordings-sectionList');
    for (const item of value) {
      list.appendChild(h('li', '', itemLine(key, item)));
    }
    node.appendChild(list);
  } else if (typeof value === 'object' && value !== null) {
    node.appendChild(h('summary', '', key));
    node.appendChild(
      table(Object.entries(value).map(([k, v]) => [k, typeof v === 'string' ? v : JSON.stringify(v)]))
    );
  } else {
    node.appendChild(h('summary', '', key));
    node.appendChild(h('pre', '', String(value)));
  }
  if (key === 'steps') {
    node.open = true;
  }
  return node;
}
