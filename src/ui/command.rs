//! What the user asked for, as data: every `*_ui` function returns [`Command`]s instead of
//! reaching into the app, and [`super::app::AmalgamApp`] applies them in one place (egui's own
//! pattern, `egui_demo_app`'s `Command`).

use std::path::PathBuf;

use crate::engine::worker::JobId;
use crate::graph::Mode;

use super::files::FolderPurpose;

#[must_use = "a command does nothing until the app runs it"]
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Validate the document and queue it.
    Queue,
    Cancel(JobId),
    /// Drop finished jobs from the queue panel.
    ClearFinished,
    /// A new document: the default merge graph.
    New,
    /// Ask for a workflow file to open.
    AskOpen,
    /// Open a workflow (or checkpoint) file, on the file thread.
    Open(PathBuf),
    /// Save to the current path, or ask for one.
    Save,
    SaveAs,
    ExportPrompt,
    /// Replace the document with the example of this index.
    Example(usize),
    Undo,
    Redo,
    SelectAll,
    ToggleMode(Mode),
    DeleteSelected,
    /// Compare two checkpoint files on the worker; the result opens the Compare window.
    Compare {
        a: PathBuf,
        b: PathBuf,
    },
    /// Compare the checkpoints two Load Checkpoint nodes name (node id, checkpoint name): the
    /// names are taken when the button is drawn, the files looked up when it is clicked.
    CompareCheckpoints([(crate::graph::NodeId, String); 2]),
    /// Add a saved file to (or take it off) the output browser's pair to compare.
    PickForCompare(PathBuf),
    /// Show a saved file's `inspect` report.
    Inspect {
        title: String,
        report: String,
    },
    /// Ask before deleting a saved file.
    AskDelete(PathBuf),
    /// Delete a saved file (confirmed), on the file thread.
    Delete(PathBuf),
    /// Bring a dropped checkpoint into the checkpoints folder, linked or copied, on the file
    /// thread.
    Import {
        path: PathBuf,
        link: bool,
    },
    /// Stop a running import (the copy is removed).
    CancelImport,
    /// Write the sample checkpoints into the model folders.
    WriteSamples,
    /// Open the checkpoints folder in the system's file manager.
    OpenModelsFolder,
    /// Show a file in the system's file manager.
    Reveal(PathBuf),
    PickFolder(FolderPurpose),
    PickExtraPaths,
    ShowSettings,
    /// The folder settings changed: rebuild the folder configuration and rescan.
    FoldersChanged,
    /// Show a picture in the image viewer.
    OpenImage(PathBuf),
    /// Queue one job per combination of the axes' values (a sweep), with its grid window.
    QueueSweep(Vec<super::sweep::Axis>),
    /// Compose the grid of sweep `n` into one PNG in the output folder.
    SaveSweepGrid(usize),
    /// Replace the document with the workflow a sweep cell's job ran.
    OpenSweepCell {
        sweep: usize,
        cell: usize,
    },
}
