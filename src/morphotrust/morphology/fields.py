"""Column names of the per-image CellProfiler tables, in pycytominer's conventions (one mapping, applied by merge).

CellProfiler's ExportToSpreadsheet writes per-image aggregates of object measurements as `Mean_Nuclei_...`,
`Median_...`, `StDev_...`, object counts as `Count_Nuclei`, image measurements without a prefix
(`ImageQuality_...`, `Granularity_...`) and its bookkeeping (`ImageNumber`, `ExecutionTime_...`) beside them.
pycytominer (`infer_cp_features`, and `aggregate` / `normalize` / `feature_select` with `features="infer"`)
takes as features the columns that start with a compartment (`Cells_`, `Nuclei_`, `Cytoplasm_`, plus `Image_`
with `image_features=True`) and as metadata those that start with `Metadata_`, and groups by `Metadata_Plate`,
`Metadata_Well`. `merge` therefore renames every column of a chunk table by these rules, in this order:

    {Mean|Median|StDev}_{Object}_{Measurement}  ->  {Object}_{Measurement}_{Mean|Median|StDev}
        Mean_Nuclei_AreaShape_Area -> Nuclei_AreaShape_Area_Mean (compartment first, CellProfiler's feature group
        second as in pycytominer's Compartment_FeatureGroup_Feature_..., the per-site statistic last)
    CellProfiler bookkeeping (BOOKKEEPING: ImageNumber, Group_*, ExecutionTime_*, ModuleError_*, FileName_*,
        PathName_*, URL_*, MD5Digest_*, Scaling_*, Height_*, Width_*, Series_*, Frame_*, Channel_*)
                                                 ->  Metadata_{name}   (never a feature)
    any other measurement (Count_*, ImageQuality_*, Granularity_*, Threshold_*, AreaOccupied_*, ...)
                                                 ->  Image_{name}      (Count_Nuclei -> Image_Count_Nuclei)
    the manifest's plate layout (RENAMED_METADATA): Metadata_plate, Metadata_well, Metadata_site
                                                 ->  Metadata_Plate, Metadata_Well, Metadata_Site
Every other Metadata_ column of the manifest keeps its name (Metadata_condition, Metadata_cell_type, ...).
"""

from __future__ import annotations

import pandas as pd

from ..errors import InputError

OBJECT_STATISTICS = ("Mean", "Median", "StDev")
BOOKKEEPING = ("ImageNumber", "Group_", "ExecutionTime_", "ModuleError_", "FileName_", "PathName_", "URL_",
               "MD5Digest_", "Scaling_", "Height_", "Width_", "Series_", "Frame_", "Channel_")
RENAMED_METADATA = {"Metadata_plate": "Metadata_Plate", "Metadata_well": "Metadata_Well",
                    "Metadata_site": "Metadata_Site"}
PLATE, WELL, SITE = RENAMED_METADATA.values()
COMPARTMENTS = ("Cells", "Nuclei", "Cytoplasm")


def field_name(column: str) -> str:
    """The pycytominer-convention name of one CellProfiler per-image column (see the module docstring)."""
    if column.startswith("Metadata_"):
        return RENAMED_METADATA.get(column, column)
    statistic, _, rest = column.partition("_")
    if statistic in OBJECT_STATISTICS and "_" in rest:
        return f"{rest}_{statistic}"
    if column.startswith(BOOKKEEPING):
        return f"Metadata_{column}"
    return f"Image_{column}"


def is_bookkeeping(column: str) -> bool:
    """A renamed CellProfiler bookkeeping column (Metadata_ImageNumber, Metadata_ExecutionTime_..., ...)."""
    return column.startswith("Metadata_") and column.removeprefix("Metadata_").startswith(BOOKKEEPING)


def object_feature(statistic: str, objects: str, measurement: str) -> str:
    """Nuclei_AreaShape_Area_Mean from ("Mean", "Nuclei", "AreaShape_Area")."""
    return f"{objects}_{measurement}_{statistic}"


def count_feature(objects: str) -> str:
    return f"Image_Count_{objects}"


def image_feature(measurement: str) -> str:
    """Image_ImageQuality_PowerLogLogSlope_DNA from "ImageQuality_PowerLogLogSlope_DNA"."""
    return f"Image_{measurement}"


def to_field_conventions(table: pd.DataFrame, source="table") -> pd.DataFrame:
    """`table` with every column renamed by `field_name`; two columns mapping to one name are an error."""
    names = {column: field_name(column) for column in table.columns}
    seen = {}
    for column, name in names.items():
        if name in seen:
            raise InputError(f"columns {seen[name]!r} and {column!r} would both be named {name!r}", file=source,
                             expected="CellProfiler per-image columns and manifest Metadata_ columns that stay "
                                      "distinct in pycytominer's conventions (morphotrust.morphology.fields)")
        seen[name] = column
    return table.rename(columns=names)
