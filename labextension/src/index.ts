import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, Notification } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { listIcon } from '@jupyterlab/ui-components';

import { RecordingsPanel } from './panel';

export { requestAPI, ApiError } from './api';
export type {
  IDiff,
  IRecordingDetails,
  IRecordingInfo,
  IRecordingReply,
  IReplayJob,
  IReplayReport
} from './api';
export { RecordingsPanel } from './panel';

/** The commands of the sidebar. */
export namespace CommandIDs {
  /** Replay a recording (args: `{name}`, default: the selected one). */
  export const replay = 'julius:replay';
  /** Reload the list of recordings. */
  export const refresh = 'julius:refresh';
  /** Insert a `%replay NAME` cell into the active notebook (args: `{name}`). */
  export const openInNotebook = 'julius:open-in-notebook';
  /** Compare two recordings (args: `{a, b}`, default: the two ticked ones). */
  export const diff = 'julius:diff';
  /** Delete a recording after confirmation (args: `{name}`, default: the selected one). */
  export const remove = 'julius:delete';
}

const PLUGIN_ID = 'julius-magics:plugin';

/**
 * Insert a `%replay NAME` cell below the active cell of the current notebook.
 * Returns false when no notebook is open.
 */
function insertReplayCell(tracker: INotebookTracker | null, name: string): boolean {
  const panel = tracker?.currentWidget;
  if (!panel) {
    return false;
  }
  NotebookActions.insertBelow(panel.content);
  const cell = panel.content.activeCell;
  if (!cell) {
    return false;
  }
  cell.model.sharedModel.setSource(`%replay ${name}`);
  return true;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'The "Recordings" sidebar of julius_magics.',
  autoStart: true,
  optional: [ISettingRegistry, ILayoutRestorer, ICommandPalette, INotebookTracker],
  activate: (
    app: JupyterFrontEnd,
    settingRegistry: ISettingRegistry | null,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null,
    tracker: INotebookTracker | null
  ) => {
    const panel = new RecordingsPanel({
      pollInterval: 10,
      replayPollInterval: 0.5,
      openInNotebook: name => void app.commands.execute(CommandIDs.openInNotebook, { name })
    });
    panel.title.icon = listIcon;
    app.shell.add(panel, 'left', { rank: 900 });
    restorer?.add(panel, 'julius-recordings');

    const nameArg = (args: any): string | null =>
      typeof args?.name === 'string' && args.name ? args.name : panel.selected;

    app.commands.addCommand(CommandIDs.refresh, {
      label: 'Refresh Recordings',
      caption: 'Reload the list of Julius recordings',
      execute: () => panel.refresh()
    });
    app.commands.addCommand(CommandIDs.replay, {
      label: args => (args?.name ? `Replay ${args.name}` : 'Replay Selected Recording'),
      caption: 'Replay a recording on a fresh cluster and verify its results',
      isEnabled: args => nameArg(args) !== null,
      execute: async args => {
        const name = nameArg(args);
        if (name === null) {
          return null;
        }
        app.shell.activateById(panel.id);
        return panel.replay(name);
      }
    });
    app.commands.addCommand(CommandIDs.diff, {
      label: 'Diff Recordings',
      caption: 'What differs between two recordings: code, rules, parameters, data, environment, results',
      isEnabled: args => (typeof args?.a === 'string' && typeof args?.b === 'string') || panel.compared.length === 2,
      execute: args => {
        const [a, b] =
          typeof args?.a === 'string' && typeof args?.b === 'string' ? [args.a, args.b] : panel.compared;
        if (!a || !b) {
          return null;
        }
        app.shell.activateById(panel.id);
        return panel.diff(a, b);
      }
    });
    app.commands.addCommand(CommandIDs.remove, {
      label: args => (args?.name ? `Delete ${args.name}` : 'Delete Selected Recording'),
      caption: 'Delete a recording from the store (asks first)',
      isEnabled: args => nameArg(args) !== null,
      execute: args => {
        const name = nameArg(args);
        return name === null ? false : panel.delete(name);
      }
    });
    app.commands.addCommand(CommandIDs.openInNotebook, {
      label: 'Open Recording in Notebook',
      caption: 'Insert a %replay cell into the active notebook',
      isEnabled: args => nameArg(args) !== null,
      execute: args => {
        const name = nameArg(args);
        if (name === null) {
          return false;
        }
        const done = insertReplayCell(tracker, name);
        if (!done) {
          Notification.warning(`Open a notebook first to insert "%replay ${name}".`, {
            autoClose: 5000
          });
        }
        return done;
      }
    });
    if (palette) {
      for (const command of [
        CommandIDs.refresh,
        CommandIDs.replay,
        CommandIDs.diff,
        CommandIDs.remove,
        CommandIDs.openInNotebook
      ]) {
        palette.addItem({ command, category: 'Julius' });
      }
    }

    if (settingRegistry) {
      settingRegistry
        .load(PLUGIN_ID)
        .then(settings => {
          const apply = () =>
            panel.configure({
              pollInterval: settings.get('pollInterval').composite as number,
              replayPollInterval: settings.get('replayPollInterval').composite as number
            });
          apply();
          settings.changed.connect(apply);
        })
        .catch(reason => console.error('julius-magics: cannot load settings', reason));
    }
  }
};

export default plugin;
